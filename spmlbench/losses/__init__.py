"""Every SPML loss under one contract (docs/architecture.md, "Loss API").

>>> loss = build_loss("gr", num_classes=20, num_train=5000, dataset="voc", q3=1.5)
>>> loss.start_epoch(1, 8); value = loss(logits, observed, index)

``build_loss`` gives the one-config module (logits (B, C) -> scalar); ``build_batched_loss`` gives
M configs of one loss at once (logits (M, B, C) -> (M,)). Hyperparameters resolve as: dataclass
(paper) defaults < per-dataset defaults (``data_manifests/loss_defaults.toml``) < user overrides.

Stateful losses need the training observed matrix: ROLE requires
``loss.init_state(observed_train, seed)`` before training (it initialises the label logits G);
LL-Cp and EM-APL record rows lazily from batches, or take ``init_state`` too.
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spmlbench.errors import ConfigError, DataError
from spmlbench.losses.base import BatchedLoss, SingleLoss
from spmlbench.losses.cole import ANLoss, ANLSLoss, BCELoss, EPRLoss, ROLELoss, WANLoss
from spmlbench.losses.em import EMAPLLoss, EMLoss
from spmlbench.losses.gr import GRLoss, GRLossBatched
from spmlbench.losses.hparams import HParams, fmt, make_hparams, parse_override
from spmlbench.losses.ll import LLCpLoss, LLCtLoss, LLRLoss
from spmlbench.losses.robust import ASLLoss, FocalLoss, HillLoss, SPLCLoss
from spmlbench.registry import Registry

DEFAULTS_FILE = Path(__file__).resolve().parents[2] / "data_manifests" / "loss_defaults.toml"


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """How to build one registered loss."""

    batched: type[BatchedLoss]
    single: type[SingleLoss] = SingleLoss
    stateful: bool = False  # keeps per-training-row state across batches (ROLE, LL-Cp, EM-APL)
    scheduled: bool = False  # changes with the epoch (GR, LL, SPLC, EM-APL)
    uses_clean_labels: bool = False
    # relative CPU cost of one batched call per training step (AN = 1; benchmarks/loss_step.py, M = 3,
    # 1 thread; ROLE includes Adam on its label matrix): only balances configs over processes
    # (spmlbench.train.parallel)
    step_cost: float = 1.0


@dataclasses.dataclass(frozen=True)
class LossInfo:
    """What ``spmlbench losses`` shows about one loss."""

    name: str
    title: str
    paper: str
    year: int
    citation: str
    defaults: dict[str, Any]
    per_dataset: dict[str, dict[str, Any]]
    stateful: bool
    scheduled: bool
    uses_clean_labels: bool


def _registry() -> Registry[LossSpec]:
    reg: Registry[LossSpec] = Registry("loss")
    reg.add("bce", LossSpec(BCELoss, uses_clean_labels=True))
    reg.add("an", LossSpec(ANLoss))
    reg.add("an_ls", LossSpec(ANLSLoss, step_cost=1.3))
    reg.add("wan", LossSpec(WANLoss, step_cost=1.15))
    reg.add("epr", LossSpec(EPRLoss, step_cost=1.4))
    reg.add("role", LossSpec(ROLELoss, stateful=True, step_cost=6.0))
    reg.add("ll_r", LossSpec(LLRLoss, scheduled=True, step_cost=1.2))
    reg.add("ll_ct", LossSpec(LLCtLoss, scheduled=True, step_cost=1.2))
    reg.add("ll_cp", LossSpec(LLCpLoss, stateful=True, scheduled=True, step_cost=2.1))
    reg.add("em", LossSpec(EMLoss, step_cost=1.1))
    reg.add("em_apl", LossSpec(EMAPLLoss, stateful=True, scheduled=True, step_cost=2.2))
    reg.add("focal", LossSpec(FocalLoss, step_cost=1.5))
    reg.add("asl", LossSpec(ASLLoss, step_cost=1.7))
    reg.add("hill", LossSpec(HillLoss, step_cost=1.8))
    reg.add("splc", LossSpec(SPLCLoss, scheduled=True, step_cost=1.7))
    reg.add("gr", LossSpec(GRLossBatched, single=GRLoss, scheduled=True, step_cost=1.4))
    return reg


LOSSES: Registry[LossSpec] = _registry()


@functools.cache
def _manifest() -> Mapping[str, Any]:
    try:
        with open(DEFAULTS_FILE, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise DataError(f"{DEFAULTS_FILE}: loss defaults file not found; restore "
                        "data_manifests/loss_defaults.toml from the repository") from None


def list_losses() -> list[str]:
    """Registry names in the canonical order."""
    return LOSSES.names()


def dataset_defaults(name: str, dataset: str | None) -> dict[str, Any]:
    """Per-dataset defaults of loss ``name`` (empty for None or a dataset without any)."""
    LOSSES.get(name)
    if dataset is None:
        return {}
    return dict(_manifest().get("dataset", {}).get(dataset, {}).get(name, {}))


def resolve_hparams(name: str, dataset: str | None = None, **overrides: Any) -> HParams:
    """The validated hyperparameters of ``name``: paper defaults < dataset defaults < overrides."""
    spec = LOSSES.get(name)
    return make_hparams(spec.batched.hparams_cls, dataset_defaults(name, dataset), overrides)


def build_batched_loss(name: str, hparams: Sequence[Mapping[str, Any] | HParams], num_classes: int,
                       num_train: int | None = None, dataset: str | None = None) -> BatchedLoss:
    """M configs of loss ``name``: ``forward(logits (M, B, C), observed (B, C), index (B,)) -> (M,)``.

    Each entry of ``hparams`` is a mapping of overrides (resolved like :func:`resolve_hparams`)
    or an already built hyperparameter dataclass.
    """
    spec = LOSSES.get(name)
    cls = spec.batched.hparams_cls
    resolved = [h if isinstance(h, cls) else resolve_hparams(name, dataset, **dict(h)) for h in hparams]  # type: ignore[arg-type]
    return spec.batched(resolved, num_classes=num_classes, num_train=num_train)


def build_loss(name: str, num_classes: int, num_train: int | None = None, dataset: str | None = None,
               **hparams: Any) -> SingleLoss:
    """One config of loss ``name``: ``forward(logits (B, C), observed (B, C), index (B,)) -> scalar``."""
    spec = LOSSES.get(name)
    batched = build_batched_loss(name, [hparams], num_classes=num_classes, num_train=num_train, dataset=dataset)
    return spec.single(batched)


def loss_info(name: str) -> LossInfo:
    """Registry name, title, paper, year, citation, defaults and flags of loss ``name``."""
    spec = LOSSES.get(name)
    info = _manifest()["info"][name]
    cls = spec.batched.hparams_cls
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    per_dataset = {ds: dict(table[name]) for ds, table in _manifest().get("dataset", {}).items() if name in table}
    return LossInfo(name=name, title=info["title"], paper=info["paper"], year=int(info["year"]),
                    citation=info["citation"], defaults=defaults, per_dataset=per_dataset,
                    stateful=spec.stateful, scheduled=spec.scheduled, uses_clean_labels=spec.uses_clean_labels)


def check_override(text: str) -> HParams:
    """Validate one ``loss.param=value`` (as ``--set`` takes it); return the resolved hparams."""
    loss, param, value = parse_override(text)
    return resolve_hparams(loss, **{param: value})


__all__ = [
    "LOSSES", "BatchedLoss", "ConfigError", "HParams", "LossInfo", "SingleLoss", "build_batched_loss",
    "build_loss", "check_override", "dataset_defaults", "fmt", "list_losses", "loss_info", "parse_override",
    "resolve_hparams",
]
