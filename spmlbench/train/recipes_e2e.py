"""Per-loss end-to-end recipes (``data_manifests/recipes_e2e.toml``) resolved for one job.

The data (learning rates, batch sizes, epochs, stopping rules, LinearInit's fixed linear phase)
lives in the TOML file; this module merges its layers and validates the result.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spmlbench.errors import ConfigError
from spmlbench.train.early_stop import canonical_rule
from spmlbench.train.early_stop import parse_early_stop as parse_early_stop_points

RECIPES_FILE = "recipes_e2e.toml"


@dataclasses.dataclass(frozen=True)
class E2ERecipe:
    """Resolved end-to-end settings for one (loss, dataset)."""

    family: str
    optimizer: str
    lr: float
    head_lr_mult: float
    batch_size: int
    epochs: int
    early_stop: str
    early_stop_drop: float
    eval_batch_size: int
    source: str

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for records and checkpoint fingerprints)."""
        return dataclasses.asdict(self)

    @property
    def early_stop_rule(self) -> str:
        """The rule as JobSpec writes it: ``none``, ``no_improve`` or ``drop:<points>``."""
        return f"drop:{self.early_stop_drop:g}" if self.early_stop == "drop" else self.early_stop

    def job_fields(self) -> dict[str, Any]:
        """The JobSpec fields this recipe sets for modes e2e / linear-init (epochs, batch_size, lr, early_stop)."""
        return {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr, "early_stop": self.early_stop_rule}


@dataclasses.dataclass(frozen=True)
class LinearPhaseRecipe:
    """LinearInit's linear phase on cached features (fixed settings, best val epoch kept)."""

    lr: float
    batch_size: int
    epochs: int
    source: str

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (for records and checkpoint fingerprints)."""
        return dataclasses.asdict(self)


def recipes_path(manifest_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path of ``recipes_e2e.toml`` (in the manifest folder of :mod:`spmlbench.data.manifest`)."""
    from spmlbench.data.manifest import manifests_dir

    return manifests_dir(manifest_dir) / RECIPES_FILE


def load_recipes(manifest_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The raw recipe tables."""
    path = recipes_path(manifest_dir)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found; restore data_manifests/{RECIPES_FILE}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the file") from None


def parse_early_stop(value: Any) -> tuple[str, float] | None:
    """An early-stop setting as ``(rule, drop_points)`` (rule ``none``, ``no_improve`` or ``drop``); None
    (or True) means "use the recipe". Spellings: :func:`spmlbench.train.early_stop.canonical_rule`."""
    if value is None or value is True:
        return None
    rule = canonical_rule(value)
    drop = parse_early_stop_points(rule)
    return ("drop", drop) if drop is not None else (rule, 0.0)


def _family_of(loss: str, families: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    for name, fam in families.items():
        if loss in fam.get("losses", []):
            return name, fam
    return "cole", {}


def _layer(table: Mapping[str, Any]) -> dict[str, Any]:
    """The scalar settings of one table (nested tables and the loss list dropped)."""
    return {k: v for k, v in table.items() if not isinstance(v, (dict, list))}


def e2e_recipe(
    loss: str,
    dataset: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    manifest_dir: str | os.PathLike[str] | None = None,
) -> E2ERecipe:
    """Resolve the end-to-end recipe of ``loss`` on ``dataset``; ``overrides`` (None values ignored) win."""
    raw = load_recipes(manifest_dir).get("e2e", {})
    family, fam = _family_of(loss, raw.get("families", {}))
    merged: dict[str, Any] = {"family": family}
    merged.update(_layer(raw.get("default", {})))
    merged.update(_layer(fam))
    merged.update(_layer(fam.get("datasets", {}).get(dataset, {})))
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "early_stop":
            parsed = parse_early_stop(value)
            if parsed is not None:
                merged["early_stop"], merged["early_stop_drop"] = parsed
            continue
        merged[key] = value
    return _build(E2ERecipe, merged, f"e2e recipe for {loss} on {dataset}")


def linear_init_recipe(
    loss: str,
    dataset: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    manifest_dir: str | os.PathLike[str] | None = None,
) -> LinearPhaseRecipe:
    """Resolve LinearInit's fixed linear-phase settings for ``loss`` on ``dataset``."""
    raw = load_recipes(manifest_dir).get("linear_init", {})
    per_loss = raw.get("losses", {}).get(loss, {})
    merged: dict[str, Any] = {}
    merged.update(_layer(raw.get("default", {})))
    merged.update(_layer(per_loss))
    merged.update(_layer(per_loss.get("datasets", {}).get(dataset, {})))
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(LinearPhaseRecipe, merged, f"linear-init recipe for {loss} on {dataset}")


def _build(cls: type, merged: dict[str, Any], what: str) -> Any:
    fields = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(merged) - set(fields))
    if unknown:
        raise ConfigError(f"{what}: unknown setting(s) {', '.join(unknown)}; use {', '.join(fields)}")
    missing = sorted(set(fields) - set(merged))
    if missing:
        raise ConfigError(f"{what}: missing setting(s) {', '.join(missing)}; add them to {RECIPES_FILE}")
    out: dict[str, Any] = {}
    for name, typ in fields.items():
        value = merged[name]
        try:
            out[name] = {"float": float, "int": int, "str": str}[str(typ)](value)
        except (TypeError, ValueError):
            raise ConfigError(f"{what}: {name}={value!r} is not a valid {typ}; fix the value") from None
    for name in ("lr", "head_lr_mult", "batch_size", "epochs", "eval_batch_size"):
        if name in out and not out[name] > 0:
            raise ConfigError(f"{what}: {name} must be > 0 (got {out[name]}); fix the value")
    if "early_stop" in out:
        canonical_rule({"rule": out["early_stop"], "drop": out["early_stop_drop"]})
    if out.get("optimizer", "adam") != "adam":
        raise ConfigError(f"{what}: optimizer {out['optimizer']!r} is not supported; use adam")
    return cls(**out)
