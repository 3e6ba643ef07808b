"""What the end-to-end trainers are told: a job's resolved recipe (e2e and LinearInit's linear phase).

The values come from ``spmlbench/data_manifests/recipes_e2e.toml``, resolved per (loss, dataset) with the
job's settings on top by :mod:`spmlbench.experiments.recipes`; the trainers never read the file.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class E2ERecipe:
    """Resolved end-to-end settings for one job (``early_stop``: ``none``, ``no_improve`` or ``drop:<points>``;
    the head trains at ``head_lr_mult x lr``, the backbone at ``lr``; ``momentum`` and ``weight_decay``:
    ``optimizer = "sgd"`` only)."""

    family: str
    optimizer: str
    momentum: float
    weight_decay: float
    lr: float
    head_lr_mult: float
    batch_size: int
    epochs: int
    early_stop: str
    eval_batch_size: int
    source: str


@dataclasses.dataclass(frozen=True)
class LinearPhaseRecipe:
    """LinearInit's linear phase on cached features (fixed settings, best val epoch kept)."""

    lr: float
    batch_size: int
    epochs: int
    source: str
