"""Methods with their own model and trainer on cached features (a loss registered with ``trainer=<name>``):
the name -> trainer table the executors dispatch through."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from spmlbench.errors import ConfigError

TRAINERS = {"smile": "spmlbench.train.smile:train_smile"}


def method_trainer(name: str) -> Callable[..., Any]:
    """``train(data, config, *, device, progress) -> TrainResult`` of method ``name``."""
    if name not in TRAINERS:
        raise ConfigError(f"trainer {name!r}: unknown; choose one of: {', '.join(TRAINERS)}")
    module, _, attr = TRAINERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)
