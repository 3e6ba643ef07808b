"""What a linear-probe run is made of: its config, its data, its result, and the rules on them
(early stopping, validation labels, which losses train on clean labels)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.train.early_stop import parse_early_stop

VAL_MODES = ("clean", "observed")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One linear-probe run: loss, its hyperparameters (name -> value), seed and optimisation settings.

    ``early_stop``: ``none`` (best val epoch), ``no_improve`` (stop at the first epoch whose val mAP
    does not improve), or ``drop:<points>`` (stop once val mAP falls more than that below the best).
    """

    loss: str
    hparams: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    lr: float = 1e-4
    batch_size: int = 8
    epochs: int = 25
    early_stop: str = "none"
    val: str = "clean"

    def hparams_dict(self) -> dict[str, Any]:
        """The hyperparameters as a dict (lists for sequence values)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams}


def freeze_hparams(hparams: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Sorted, hashable ``(name, value)`` pairs (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in hparams.items()))


@dataclasses.dataclass
class LinearData:
    """Split features (float32, loaded once) and 0/1 float32 label matrices of one dataset."""

    dataset: str
    x_train: Tensor
    x_val: Tensor
    x_test: Tensor
    y_train: Tensor  # clean
    s_train: Tensor  # observed single positives
    y_val: Tensor
    s_val: Tensor
    y_test: Tensor
    # CLIP pseudo-label caches of the training rows by source, (N, 2, V, C) (losses with ``pseudo``)
    pseudo: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    # cached layer4 maps of every labels row (memory map, float16) and the rows of each split (BoostLU frozen)
    maps: Any = None
    split_rows: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.y_train.shape[1])

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.x_train.shape[1])

    def to(self, device: torch.device | str) -> LinearData:
        """The same data on ``device``."""
        kept = ("pseudo", "maps", "split_rows")
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)[1:] if f.name not in kept}
        return LinearData(self.dataset, **moved, pseudo={k: v.to(device) for k, v in self.pseudo.items()},
                          maps=self.maps, split_rows=self.split_rows)


def linear_data(dataset: str, features: np.ndarray, labels: Any) -> LinearData:
    """Build :class:`LinearData` from (N, D) features and a labels DataFrame (``split``, ``labels``, ``observed``)."""
    from spmlbench.data.store import label_matrix

    if features.shape[0] != len(labels):
        raise ValueError(f"{dataset}: {features.shape[0]} feature rows but {len(labels)} label rows")
    split = labels["split"].to_numpy()
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))

    def rows(name: str) -> Tensor:
        return torch.from_numpy(np.flatnonzero(split == name))

    def mat(column: str, name: str) -> Tensor:
        return torch.from_numpy(label_matrix(labels, column, name).astype(np.float32))

    return LinearData(
        dataset=dataset,
        x_train=feats.index_select(0, rows("train")),
        x_val=feats.index_select(0, rows("val")),
        x_test=feats.index_select(0, rows("test")),
        y_train=mat("labels", "train"),
        s_train=mat("observed", "train"),
        y_val=mat("labels", "val"),
        s_val=mat("observed", "val"),
        y_test=mat("labels", "test"),
        split_rows={name: np.flatnonzero(split == name) for name in ("train", "val", "test")},
    )


@dataclasses.dataclass
class EpochProgress:
    """Reported after every epoch of a cohort: configs trained together, epoch, best val mAP so far."""

    epoch: int
    epochs: int
    configs: int
    best_val_map: float


ProgressFn = Callable[[EpochProgress], None]
# (epoch, config indices, sigmoid val scores (M, N_val, C) of those configs), once per cohort per epoch
ValHook = Callable[[int, list[int], Tensor], None]


def uses_clean_labels(loss: str) -> bool:
    """Whether the trainer passes the clean labels as ``observed`` (the full-label ``bce``)."""
    from spmlbench.losses import loss_info

    return bool(getattr(loss_info(loss), "uses_clean_labels", False))


def check_config(c: TrainConfig) -> None:
    """Validate a config's val mode, early-stop rule and optimisation settings (ConfigError)."""
    if c.val not in VAL_MODES:
        raise ConfigError(f"val={c.val!r}: unknown; use clean or observed")
    parse_early_stop(c.early_stop)
    if c.batch_size < 1 or c.epochs < 1 or not (c.lr > 0 and math.isfinite(c.lr)):
        raise ConfigError(f"{c.loss}: batch_size, epochs and lr must be positive; got "
                          f"{c.batch_size}, {c.epochs}, {c.lr}")


def attach_pseudo(loss: Any, pseudo: Mapping[str, Tensor]) -> None:
    """Give a pseudo-label loss (``pseudo_source`` set) the cache it reads; other losses are left alone."""
    batched = getattr(loss, "batched", loss)  # a SingleLoss wraps its batched form
    source = getattr(batched, "pseudo_source", "")
    if not source:
        return
    if source not in pseudo:
        raise ConfigError(f"{batched.hparams_cls.loss}: needs the {source} pseudo-label cache; run "
                          f"'spmlbench pseudo-labels <dataset> --source {source}' first")
    batched.attach_pseudo(pseudo[source])


def pseudo_sources(losses: Any) -> list[str]:
    """The pseudo-label caches the named losses read (registry ``pseudo``), in order, once each."""
    from spmlbench.losses import LOSSES

    return list(dict.fromkeys(s for s in (LOSSES.get(n).pseudo for n in losses) if s))
