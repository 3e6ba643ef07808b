"""Methods with their own model and trainer on cached features (a loss registered with ``trainer=<name>``, or a
head's frozen variant in linear mode, ``head=<name>``): the name -> trainer table the executors dispatch through."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

from spmlbench.errors import ConfigError
from spmlbench.runtime import flush_denormals

TRAINERS = {
    "smile": "spmlbench.train.smile:train_smile",
    "boostlu": "spmlbench.train.cached_heads:train_boostlu_maps",  # BoostLU's head on cached maps (linear mode)
    "mime_vib": "spmlbench.train.cached_heads:train_mime_vib",  # MIME's pooled-feature variant (loss mime_vib)
}


def method_trainer(name: str) -> Callable[..., Any]:
    """``train(data, config, *, device, progress) -> TrainResult`` of method ``name`` (on a CPU with denormals
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


def linear_trainer(loss: Any) -> str | None:
    """The trainer a registered loss (its ``LossDef``) uses in linear mode: its own (``trainer``), its head's
    frozen variant when there is one (``head`` in :data:`TRAINERS`), else None (the batched linear trainer)."""
    if loss.trainer:
        return str(loss.trainer)
    return str(loss.head) if reads_maps(loss) else None


def reads_maps(loss: Any) -> bool:
    """Whether a registered loss in linear mode trains its head's frozen variant on cached layer4 maps (BoostLU)."""
    return not loss.trainer and loss.head in TRAINERS
