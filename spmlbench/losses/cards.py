"""Loss cards: what ``spmlbench losses`` shows about each loss, readable without importing torch.

A card holds a loss's registration metadata, its paper defaults, its per-dataset defaults with their
sources, and its defaults resolved for each dataset that has some. The built-in losses' cards are cached as
JSON in ``<cache dir>/loss-cards.json`` (:func:`spmlbench.paths.cache_dir`), under a key that hashes every
file of ``spmlbench/losses/`` and ``spmlbench/heads/``, the per-dataset defaults file and the version: a listing reads them back
without torch. A missing, unreadable, corrupt or stale cache is rebuilt from the registry (which imports
the built-ins, and torch); a cache folder that cannot be written only means the next listing builds again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from spmlbench import __version__
from spmlbench.atomic import atomic_write_text
from spmlbench.losses import DEFAULTS_FILE
from spmlbench.losses.registry import LOSSES
from spmlbench.paths import cache_dir

CACHE_FILE = "loss-cards.json"
LOSSES_DIR = Path(__file__).resolve().parent
# what the built-ins' cards are made from: the losses, and the heads whose methods are composed into losses
SOURCE_DIRS = (LOSSES_DIR, LOSSES_DIR.parent / "heads")


@dataclasses.dataclass(frozen=True)
class LossCard:
    """One loss as ``spmlbench losses`` lists it (lists where the hyperparameters hold tuples)."""

    name: str
    title: str
    paper: str
    year: int
    citation: str
    defaults: dict[str, Any]  # the hyperparameter dataclass's field defaults
    per_dataset: dict[str, dict[str, Any]]  # spmlbench/data_manifests/loss_defaults.toml, by dataset
    sources: dict[str, str]  # where those come from, by dataset
    resolved: dict[str, dict[str, Any] | None]  # defaults resolved for each dataset of per_dataset
    resolved_else: dict[str, Any] | None  # ... for any other dataset; None: a value is required there
    stateful: bool
    scheduled: bool
    uses_clean_labels: bool
    origin: str  # the registering file, relative to the package's parent for a built-in
    fused: bool
    pseudo: str | None
    version: int
    order: int

    def resolved_for(self, dataset: str) -> dict[str, Any] | None:
        """The defaults resolved for ``dataset`` (None when a required value has no default there)."""
        return self.resolved.get(dataset, self.resolved_else)

    def source(self, dataset: str) -> str:
        """Where the per-dataset defaults on ``dataset`` come from ("" when not stated)."""
        return self.sources.get(dataset, "")


def card_of(name: str) -> LossCard:
    """The card of registered loss ``name``, built from the registry (imports the built-ins, and torch)."""
    from spmlbench.errors import ConfigError
    from spmlbench.losses import defaults_sources, get_loss, loss_info, resolve_hparams

    def resolved(dataset: str | None) -> dict[str, Any] | None:
        try:
            return resolve_hparams(name, dataset).as_dict()
        except ConfigError:  # a required value without a default for this dataset
            return None

    info = loss_info(name)
    return LossCard(name=name, title=info.title, paper=info.paper, year=info.year, citation=info.citation,
                    defaults={k: list(v) if isinstance(v, tuple) else v for k, v in info.defaults.items()},
                    per_dataset=info.per_dataset, sources=defaults_sources(name),
                    resolved={ds: resolved(ds) for ds in info.per_dataset}, resolved_else=resolved(None),
                    stateful=info.stateful, scheduled=info.scheduled, uses_clean_labels=info.uses_clean_labels,
                    origin=info.origin, fused=info.fused, pseudo=info.pseudo, version=info.version,
                    order=get_loss(name).order)


def listed_cards() -> list[LossCard]:
    """The card of every registered loss, in listing order: from the registry once it is loaded (it may hold
    plugins), else the built-ins' cached cards (no torch)."""
    if LOSSES.loaded:
        return [card_of(name) for name in LOSSES.names()]
    return cards_for_builtins()


def cards_for_builtins() -> list[LossCard]:
    """The built-in losses' cards: read from the cache when its key matches, else built and cached."""
    key = cache_key()
    path = cache_dir() / CACHE_FILE
    cards = _read(path, key)
    if cards is None:
        cards = [card_of(name) for name in LOSSES.names() if LOSSES.get(name).builtin]
        try:
            atomic_write_text(path, json.dumps({"key": key, "cards": [dataclasses.asdict(c) for c in cards]}))
        except OSError:  # a read-only or full cache folder: no cache, the same listing
            pass
    return cards


def cache_key() -> str:
    """sha256 of the spmlbench version, every file under ``spmlbench/losses/`` and ``spmlbench/heads/``
    (relative path and bytes, in path order) and the per-dataset defaults file: what the built-ins' cards
    (the heads' methods among them) are made from."""
    digest = hashlib.sha256(f"spmlbench {__version__}\0".encode())
    inputs = []
    for top in SOURCE_DIRS:
        for folder, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if d != "__pycache__"]
            inputs += [(Path(folder, n).relative_to(top.parent).as_posix(), Path(folder, n))
                       for n in names if not n.endswith(".pyc")]
    inputs.sort()
    for label, path in [*inputs, ("loss_defaults.toml", DEFAULTS_FILE)]:
        try:
            data = path.read_bytes()
        except OSError:  # the defaults file missing: building the cards says so
            data = b"\0missing"
        digest.update(f"{label}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()


def _read(path: Path, key: str) -> list[LossCard] | None:
    """The cards cached at ``path`` under ``key`` (None when missing, unreadable, corrupt or for another key)."""
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cached, dict) or cached.get("key") != key:
            return None
        return [LossCard(**fields) for fields in cached["cards"]]
    except (OSError, ValueError, TypeError, KeyError, RecursionError):
        return None
