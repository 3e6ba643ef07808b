"""Trainers: the linear-mode loops of methods whose loop is not the batched linear one, one module each, each
registering itself (``register_trainer``): ``cached`` (a head other than the linear one on cached inputs) and
``smile`` (SMILE's two-model step). A method names its trainer (:class:`spmlbench.heads.Method`); the executors
ask :func:`trainer` for it. Every trainer runs its epochs on the one engine (:mod:`spmlbench.train.engine`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

from spmlbench.registry import Registry
from spmlbench.runtime import flush_denormals

TrainFn = Callable[..., Any]  # train(data, config, *, device, progress) -> TrainResult
TRAINERS: Registry[TrainFn] = Registry("trainer")


def register_trainer(name: str, fn: TrainFn) -> TrainFn:
    """Register ``fn`` as trainer ``name`` (where ``fn`` is defined); returns ``fn``."""
    TRAINERS.remove(name)  # a module imported again registers itself again
    TRAINERS.add(name, fn)
    return fn


def load_builtins() -> None:
    """Import every module of this package (each registers its trainer)."""
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")


def trainer(name: str) -> TrainFn:
    """``train(data, config, *, device, progress) -> TrainResult`` of trainer ``name`` (on a CPU with denormals
    flushed, as every trainer: :func:`spmlbench.runtime.flush_denormals`); ConfigError for an unknown name."""
    load_builtins()
    fn = TRAINERS.get(name)

    @functools.wraps(fn)
    def train(*args: Any, **kwargs: Any) -> Any:
        with flush_denormals(kwargs.get("device", "cpu")):
            return fn(*args, **kwargs)

    return train
