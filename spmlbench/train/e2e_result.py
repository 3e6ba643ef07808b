"""What an end-to-end job returns (:class:`E2EResult`) and the hooks a caller may give the trainer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


@dataclasses.dataclass
class E2EResult:
    """What one end-to-end (or LinearInit) job produced; ``error`` is None on success.

    ``val_map``/``train_loss``: one value per epoch run (1-based epoch i at index i-1);
    ``best_epoch``: 1-based best val epoch (0 when no epoch finished); ``test_map`` and ``test_ap``
    (per class), both x100, of the best epoch's model on the test split.
    ``settings``: the resolved recipe and run options; ``linear_phase``: LinearInit's linear-phase
    metrics (None for mode e2e).
    """

    val_map: list[float]
    train_loss: list[float]
    best_epoch: int
    test_map: float
    test_ap: list[float]
    epochs_run: int
    device: str
    wall_s: float
    error: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    linear_phase: dict[str, Any] | None = None
    train_s: list[float] = dataclasses.field(default_factory=list)  # seconds of each epoch's training pass

    @property
    def ok(self) -> bool:
        """True when the job finished without error."""
        return self.error is None

    @property
    def status(self) -> str:
        """``ok`` or ``failed`` (so a result reads like ``train.linear.ConfigResult`` for ``make_record``)."""
        return "ok" if self.ok else "failed"

    def record_fields(self) -> dict[str, Any]:
        """The result-record columns this trainer fills (architecture.md, result records)."""
        return {
            "status": self.status,
            "error": self.error,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "val_map": list(self.val_map),
            "train_loss": list(self.train_loss),
            "test_map": self.test_map,
            "test_ap": list(self.test_ap),
            "wall_s": self.wall_s,
            "device": self.device,
        }

    def to_json(self) -> str:
        """JSON text of the whole result."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=float)

    @classmethod
    def from_json(cls, text: str) -> E2EResult:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


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
