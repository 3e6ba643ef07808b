"""The linear-mode trainers of methods whose loop is not the batched linear one (:mod:`spmlbench.heads`): a head
on cached inputs (``cached``: pooled features, or the layer4 maps for a head that consumes the map) and SMILE's
two-model step (``smile``): the name -> trainer table the executors dispatch through."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from spmlbench.errors import ConfigError
from spmlbench.heads import CACHED, method_of
from spmlbench.runtime import flush_denormals

TRAINERS = {
    CACHED: "spmlbench.train.cached_heads:train_cached_head",
    "smile": "spmlbench.train.smile:train_smile",
}


def method_trainer(name: str) -> Callable[..., Any]:
    """``train(data, config, *, device, progress) -> TrainResult`` of trainer ``name`` (on a CPU with denormals
    flushed, as every trainer: :func:`spmlbench.runtime.flush_denormals`)."""
    if name not in TRAINERS:
        raise ConfigError(f"trainer {name!r}: unknown; choose one of: {', '.join(TRAINERS)}")
    module, _, attr = TRAINERS[name].partition(":")
    fn = getattr(importlib.import_module(module), attr)

    @functools.wraps(fn)
    def train(*args: Any, **kwargs: Any) -> Any:
        with flush_denormals(kwargs.get("device", "cpu")):
            return fn(*args, **kwargs)

    return train


def linear_trainer(loss: str) -> str | None:
    """The trainer of method (or loss) ``loss`` in linear mode; None for the batched linear trainer."""
    return method_of(loss).linear_trainer()


def reads_maps(loss: str) -> bool:
    """Whether method ``loss`` in linear mode trains its head on the cached layer4 maps (BoostLU)."""
    return method_of(loss).reads_maps()
