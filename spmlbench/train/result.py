"""What every trainer returns: :class:`TrainResult` (linear probes, the reference loop, e2e, LinearInit)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any


def _floats() -> list[float]:
    return []


@dataclasses.dataclass
class TrainResult:
    """One run's outcome; ``status`` is ``ok`` or ``failed`` (``error`` says why).

    ``val_map`` / ``train_loss``: one value per epoch run (1-based epoch i at index i-1); ``best_epoch``:
    the 1-based best val epoch (0 when none finished); ``test_map`` / ``test_ap`` (per class), both x100,
    of the best epoch's model on the test split. End-to-end trainers also fill ``device``, ``wall_s``,
    ``settings`` (the resolved recipe and run options), ``train_s`` (seconds of each training pass) and,
    for LinearInit, ``linear_phase``. ``best_state`` (``train_linear(keep_best=True)`` only, never
    serialised): the best epoch's head ``{"weight" (C, D), "bias" (C,)}`` and loss state.
    """

    status: str = "ok"
    error: str | None = None
    epochs_run: int = 0
    best_epoch: int = 0
    val_map: list[float] = dataclasses.field(default_factory=_floats)
    train_loss: list[float] = dataclasses.field(default_factory=_floats)
    test_map: float = math.nan
    test_ap: list[float] = dataclasses.field(default_factory=_floats)
    device: str = ""
    wall_s: float = 0.0
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    linear_phase: dict[str, Any] | None = None
    train_s: list[float] = dataclasses.field(default_factory=_floats)
    best_state: dict[str, Any] | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        """True when the run finished without error."""
        return self.status == "ok" and self.error is None

    def record_fields(self) -> dict[str, Any]:
        """The result-record columns a trainer fills (architecture.md, result records)."""
        return {"status": self.status, "error": self.error, "epochs_run": self.epochs_run,
                "best_epoch": self.best_epoch, "val_map": list(self.val_map), "train_loss": list(self.train_loss),
                "test_map": self.test_map, "test_ap": list(self.test_ap)}

    def to_json(self) -> str:
        """JSON text of the result (``best_state`` left out)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "best_state"}
        return json.dumps(fields, sort_keys=True, default=float)

    @classmethod
    def from_json(cls, text: str) -> TrainResult:
        """Inverse of :meth:`to_json` (a result saved before ``status`` existed gets it from ``error``)."""
        fields = json.loads(text)
        fields.setdefault("status", "ok" if fields.get("error") is None else "failed")
        return cls(**fields)
