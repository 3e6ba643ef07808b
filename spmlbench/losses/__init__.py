"""Every SPML loss under one contract (docs/architecture.md, "Loss API").

>>> loss = build_loss("gr", num_classes=20, num_train=5000, dataset="voc", q3=1.5)
>>> loss.start_epoch(1, 8); value = loss(logits, observed, index)

``build_loss`` gives the one-config module (logits (B, C) -> scalar); ``build_batched_loss`` gives
M configs of one loss at once (logits (M, B, C) -> (M,)). Hyperparameters resolve as: dataclass
(paper) defaults < per-dataset defaults (``spmlbench/data_manifests/loss_defaults.toml``) < user overrides.

Stateful losses need the training observed matrix: ROLE requires
``loss.init_state(observed_train, seed)`` before training (it initialises the label logits G);
LL-Cp and EM-APL record rows lazily from batches, or take ``init_state`` too.

Importing this package imports no torch: the built-in losses load on the registry's first lookup
(``LOSSES``, ``list_losses``, ``build_loss``, ...), and the torch classes it names on first use.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import tomllib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from spmlbench.errors import ConfigError, DataError
from spmlbench.hparams import HParams, fmt, make_hparams, parse_override
from spmlbench.losses.registry import LOSSES as _REGISTRY
from spmlbench.losses.registry import LossDef, register_loss
from spmlbench.paths import shipped

if TYPE_CHECKING:
    from spmlbench.losses.base import BatchedLoss, SingleLoss
    from spmlbench.losses.plain import PlainBatched, Step
    from spmlbench.losses.registry import LOSSES

# Names this package gives on first use (PEP 562), so that importing it imports no torch.
_LAZY = {"BatchedLoss": "spmlbench.losses.base", "SingleLoss": "spmlbench.losses.base",
         "Step": "spmlbench.losses.plain"}

DEFAULTS_FILE = shipped("loss_defaults.toml")
PATHS = ("auto", "fused", "plain")


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
    origin: str = ""
    fused: bool = False
    pseudo: str | None = None  # the CLIP pseudo-label cache it reads (the clip extra)
    version: int = 1  # the formula's version (part of job ids when > 1)


def load_builtins() -> None:
    """Import every module of :mod:`spmlbench.losses.builtin` (each registers its loss), once."""
    _REGISTRY.ensure_loaded()


def __getattr__(name: str) -> Any:
    """``LOSSES`` with the built-ins registered (and the heads' methods composed), and the torch classes of
    :data:`_LAZY`, on first use."""
    if name == "LOSSES":
        _REGISTRY.ensure_loaded()
        globals()["LOSSES"] = _REGISTRY
        return _REGISTRY
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _manifest() -> Mapping[str, Any]:
    try:
        with open(DEFAULTS_FILE, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise DataError(f"{DEFAULTS_FILE}: loss defaults file not found; restore "
                        "spmlbench/data_manifests/loss_defaults.toml from the repository") from None


def list_losses() -> list[str]:
    """Registry names in the canonical order."""
    return _REGISTRY.names()


def default_losses() -> list[str]:
    """What ``spmlbench run`` trains when no loss is named: every loss that needs nothing beyond labels and
    pooled features (the CLIP pseudo-label losses, which read a cache built by ``spmlbench pseudo-labels``,
    the BoostLU losses, whose head needs the feature map of the end-to-end modes, and SMILE, a method with its
    own model and trainer (minutes per epoch at COCO size), run when named)."""
    from spmlbench.heads import method_of

    return [n for n in _REGISTRY.names() if not _REGISTRY.get(n).pseudo and method_of(n).plain]


def dataset_defaults(name: str, dataset: str | None) -> dict[str, Any]:
    """Per-dataset defaults of loss ``name`` (empty for None, or a loss or dataset without any)."""
    _REGISTRY.get(name)
    if dataset is None:
        return {}
    return dict(_manifest().get("dataset", {}).get(dataset, {}).get(name, {}))


def defaults_source(name: str, dataset: str) -> str:
    """Where the per-dataset defaults of ``name`` on ``dataset`` come from ("" when not stated)."""
    return defaults_sources(name).get(dataset, "")


def defaults_sources(name: str) -> dict[str, str]:
    """Where the per-dataset defaults of ``name`` come from, by dataset (the datasets that state one)."""
    return {ds: str(text) for ds, text in _manifest().get("source", {}).get(name, {}).items()}


def get_loss(name: str) -> LossDef:
    """The registered loss ``name`` (ConfigError listing the known names otherwise)."""
    return _REGISTRY.get(name)


def resolve_hparams(name: str, dataset: str | None = None, **overrides: Any) -> HParams:
    """The validated hyperparameters of ``name``: paper defaults < dataset defaults < overrides."""
    return make_hparams(_REGISTRY.get(name).params, dataset_defaults(name, dataset), overrides)


def batched_class(name: str, path: str = "auto") -> type[BatchedLoss]:
    """The batched class of loss ``name``: ``fused`` (its accelerator; ``auto`` prefers it when present),
    ``plain`` (its hand-written batched form, else the one derived from its formula)."""
    if path not in PATHS:
        raise ConfigError(f"loss path {path!r}: choose one of {', '.join(PATHS)}")
    definition = _REGISTRY.get(name)
    fused = definition.resolve("fused")
    if path == "fused" and fused is None:
        raise ConfigError(f"loss {name!r} has no fused path; use path='plain' (autograd)")
    if path != "plain" and fused is not None:
        return fused
    return definition.resolve("batched") or _derived(definition)


@functools.cache
def _derived_cached(definition: LossDef) -> type[PlainBatched]:
    from spmlbench.losses.plain import plain_class

    return plain_class(definition)


def _derived(definition: LossDef) -> type[PlainBatched]:
    try:
        return _derived_cached(definition)
    except TypeError:  # unhashable definition (a plugin's mutable metadata): no caching
        from spmlbench.losses.plain import plain_class

        return plain_class(definition)


def build_batched_loss(name: str, hparams: Sequence[Mapping[str, Any] | HParams], num_classes: int,
                       num_train: int | None = None, dataset: str | None = None, path: str = "auto") -> BatchedLoss:
    """M configs of loss ``name``: ``forward(logits (M, B, C), observed (B, C), index (B,)) -> (M,)``.

    Each entry of ``hparams`` is a mapping of overrides (resolved like :func:`resolve_hparams`)
    or an already built hyperparameter dataclass. ``path``: see :func:`batched_class`.
    """
    cls = _REGISTRY.get(name).params
    resolved = [h if isinstance(h, cls) else resolve_hparams(name, dataset, **dict(h)) for h in hparams]  # type: ignore[arg-type]
    return batched_class(name, path)(resolved, num_classes=num_classes, num_train=num_train)


def build_loss(name: str, num_classes: int, num_train: int | None = None, dataset: str | None = None,
               path: str = "auto", **hparams: Any) -> SingleLoss:
    """One config of loss ``name``: ``forward(logits (B, C), observed (B, C), index (B,)) -> scalar``."""
    batched = build_batched_loss(name, [hparams], num_classes=num_classes, num_train=num_train, dataset=dataset,
                                 path=path)
    single = _REGISTRY.get(name).resolve("single")
    if single is None or not batched.fused_grad:
        from spmlbench.losses.base import SingleLoss

        single = SingleLoss
    return single(batched)


def loss_info(name: str) -> LossInfo:
    """Registry name, title, paper, year, citation, defaults and flags of loss ``name``."""
    d = _REGISTRY.get(name)
    defaults = {f.name: f.default for f in dataclasses.fields(d.params)}
    per_dataset = {ds: dict(table[name]) for ds, table in _manifest().get("dataset", {}).items() if name in table}
    return LossInfo(name=name, title=d.title, paper=d.paper, year=d.year, citation=d.citation, defaults=defaults,
                    per_dataset=per_dataset, stateful=d.stateful, scheduled=d.scheduled,
                    uses_clean_labels=d.uses_clean_labels, origin=d.origin, fused=d.fused is not None,
                    pseudo=d.pseudo, version=d.version)


def check_override(text: str) -> HParams:
    """Validate one ``loss.param=value`` (as ``--set`` takes it); return the resolved hparams."""
    loss, param, value = parse_override(text)
    return resolve_hparams(loss, **{param: value})


__all__ = [
    "LOSSES", "BatchedLoss", "ConfigError", "HParams", "LossDef", "LossInfo", "SingleLoss", "Step",
    "batched_class", "build_batched_loss", "build_loss", "check_override", "dataset_defaults", "defaults_source",
    "defaults_sources", "fmt", "get_loss",
    "default_losses", "list_losses", "load_builtins", "loss_info", "parse_override", "register_loss",
    "resolve_hparams",
]
