"""The hooks a caller may give the end-to-end trainer, and what they see (:class:`TrainContext`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


@dataclasses.dataclass
class TrainContext:
    """Live objects of a run, handed to hooks (tests, instrumentation)."""

    model: nn.Module
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    history: dict[str, Any]
    device: torch.device


@dataclasses.dataclass
class Hooks:
    """Optional callbacks: ``on_start(ctx)`` before the first epoch this call runs,
    ``on_epoch_end(epoch, ctx)`` after an epoch's checkpoint is written."""

    on_start: Callable[[TrainContext], None] | None = None
    on_epoch_end: Callable[[int, TrainContext], None] | None = None
