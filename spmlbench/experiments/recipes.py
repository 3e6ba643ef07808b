"""Training recipes resolved for one (loss, dataset, mode): the one place that reads them.

Linear mode has two recipes (``spmlbench/data_manifests/recipes.toml``):

- ``cole`` (default): Cole et al. 2021's linear protocol for every loss: a fixed epoch budget, no
  early stop, and (lr, batch) selected per (loss, dataset) on val mAP from a grid
  (:class:`LinearProtocol`; the selection itself is :mod:`spmlbench.experiments.selection`);
- ``paper``: each paper's end-to-end recipe transposed to a linear head (:func:`paper_recipe`), not
  comparable across losses.

Modes ``e2e`` and ``linear-init`` always use each paper's own end-to-end recipe
(``spmlbench/data_manifests/recipes_e2e.toml``): :func:`e2e_recipe` and :func:`linear_init_recipe` resolve it
per (loss, dataset), :func:`job_recipes` with a job's own settings on top; the trainers get the
resolved :class:`~spmlbench.train.e2e_recipe.E2ERecipe` / ``LinearPhaseRecipe`` and never read a file.
Both files ship with the package (:func:`spmlbench.paths.shipped`).
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from typing import Any

from spmlbench.errors import ConfigError
from spmlbench.paths import shipped
from spmlbench.train.e2e_recipe import E2ERecipe, LinearPhaseRecipe
from spmlbench.train.early_stop import canonical_rule

LINEAR_FILE = "recipes.toml"
E2E_FILE = "recipes_e2e.toml"
LINEAR_RECIPES = ("cole", "paper")
SELECT_RULES = ("first-seed", "each-seed", "mean")
OPTIMIZERS = ("adam", "adamax", "sgd")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Training defaults of one loss on one dataset (one point: lr, batch size, epochs, stop rule)."""

    lr: float
    batch_size: int
    epochs: int
    early_stop: str  # resolved rule
    source: str


@dataclasses.dataclass(frozen=True)
class LinearProtocol:
    """Cole et al.'s linear protocol: every loss the same budget, (lr, batch) picked on val mAP."""

    epochs: int
    early_stop: str
    lr_grid: tuple[float, ...]
    batch_grid: tuple[int, ...]
    select: str
    source: str

    def points(self, lr: float | None = None, batch_size: int | None = None) -> list[tuple[float, int]]:
        """Grid points ``(lr, batch)`` (lr-major); a given ``lr`` or ``batch_size`` fixes that axis."""
        lrs = [float(lr)] if lr is not None else list(self.lr_grid)
        batches = [int(batch_size)] if batch_size is not None else list(self.batch_grid)
        return [(a, b) for a in lrs for b in batches]


def load_table(name: str, section: str) -> dict[str, Any]:
    """Section ``section`` of the shipped recipe file ``name`` (ConfigError when unreadable)."""
    path = shipped(name)
    try:
        return dict(tomllib.loads(path.read_text(encoding="utf-8")).get(section, {}))
    except FileNotFoundError:
        raise ConfigError(f"{path}: recipe file not found; restore spmlbench/data_manifests/{name}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc}); fix the file") from None


def _linear_table() -> dict[str, Any]:
    return load_table(LINEAR_FILE, "linear")


def _rule(table: Mapping[str, Any]) -> str:
    return canonical_rule({"rule": table["early_stop"], "drop": table.get("early_stop_drop", 0.0)})


def linear_protocol(lr_grid: list[float] | None = None, batch_grid: list[int] | None = None) -> LinearProtocol:
    """The ``cole`` linear protocol of ``recipes.toml``, with its grid optionally replaced."""
    t = _linear_table()["cole"]
    lrs = tuple(float(v) for v in (lr_grid if lr_grid is not None else t["lr_grid"]))
    batches = tuple(int(v) for v in (batch_grid if batch_grid is not None else t["batch_grid"]))
    if not lrs or not batches:
        raise ConfigError("--lr-grid/--batch-grid: empty grid; give at least one value")
    for v in lrs:
        if not v > 0:
            raise ConfigError(f"--lr-grid: {v:g} is not a positive learning rate")
    for b in batches:
        if b < 1:
            raise ConfigError(f"--batch-grid: {b} is not a batch size >= 1")
    select = str(t.get("select", "first-seed"))
    return LinearProtocol(int(t["epochs"]), _rule(t), tuple(dict.fromkeys(lrs)), tuple(dict.fromkeys(batches)),
                          select, str(t["source"]))


def paper_recipe(loss: str, dataset: str) -> Recipe:
    """The loss's paper recipe transposed to a linear head on ``dataset`` (``--recipe paper``).

    Resolution (later wins): default < family < family.datasets.<dataset> < datasets.<dataset>.
    """
    table = _linear_table()
    merged: dict[str, Any] = dict(table["default"])
    for family in table.get("families", {}).values():
        if loss in family.get("losses", []):
            merged.update({k: v for k, v in family.items() if k not in ("losses", "datasets")})
            merged.update(family.get("datasets", {}).get(dataset, {}))
    override = dict(table.get("datasets", {}).get(dataset, {}))
    note = override.pop("source_note", None)
    merged.update(override)
    if note:
        merged["source"] = f"{merged['source']}; {note}"
    return Recipe(float(merged["lr"]), int(merged["batch_size"]), int(merged["epochs"]), _rule(merged),
                  str(merged["source"]))


def recipe_source(loss: str, dataset: str, mode: str, linear_recipe: str = "cole") -> str:
    """Where a job's settings come from (for its record)."""
    if mode != "linear":
        return e2e_recipe(loss, dataset).source
    if linear_recipe == "paper":
        return paper_recipe(loss, dataset).source
    return linear_protocol().source


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``, else a one-line ConfigError naming the option."""
    if value not in choices:
        raise ConfigError(f"--{name} {value!r}: unknown; choose one of: {', '.join(choices)}")
    return value


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
) -> E2ERecipe:
    """Resolve the end-to-end recipe of ``loss`` on ``dataset``; ``overrides`` (None values ignored) win.

    Resolution (later wins): e2e.default < family < family.datasets.<dataset> < overrides.
    """
    raw = load_table(E2E_FILE, "e2e")
    family, fam = _family_of(loss, raw.get("families", {}))
    merged: dict[str, Any] = {"family": family}
    merged.update(_layer(raw.get("default", {})))
    merged.update(_layer(fam))
    merged.update(_layer(fam.get("datasets", {}).get(dataset, {})))
    if "early_stop" in merged:  # the file writes rule and drop apart; the recipe holds the canonical rule
        merged["early_stop"] = _rule(merged)
        merged.pop("early_stop_drop", None)
    for key, value in (overrides or {}).items():
        if value is not None and not (key == "early_stop" and value is True):  # True: the recipe's own rule
            merged[key] = canonical_rule(value) if key == "early_stop" else value
    return _build(E2ERecipe, merged, f"e2e recipe for {loss} on {dataset}")


def linear_init_recipe(
    loss: str,
    dataset: str,
    overrides: Mapping[str, Any] | None = None,
) -> LinearPhaseRecipe:
    """Resolve LinearInit's fixed linear-phase settings for ``loss`` on ``dataset``."""
    raw = load_table(E2E_FILE, "linear_init")
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
        raise ConfigError(f"{what}: missing setting(s) {', '.join(missing)}; add them to {E2E_FILE}")
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
    if out.get("optimizer", "adam") not in OPTIMIZERS:
        raise ConfigError(f"{what}: optimizer {out['optimizer']!r} is not supported; use {', '.join(OPTIMIZERS)}")
    if out.get("optimizer") != "sgd" and (out.get("momentum") or out.get("weight_decay")):
        raise ConfigError(f"{what}: momentum and weight_decay apply to optimizer sgd only; set them to 0")
    return cls(**out)


def job_recipes(job: Any, overrides: Mapping[str, Any] | None = None,
                linear_overrides: Mapping[str, Any] | None = None) -> tuple[E2ERecipe, LinearPhaseRecipe | None]:
    """A job's end-to-end recipe (its epochs, batch size, lr and early stop win over the paper's, then
    ``overrides``) and, for mode ``linear-init``, its linear phase's (``linear_overrides`` win)."""
    own = {k: getattr(job, k, None) for k in ("epochs", "batch_size", "lr", "early_stop")}
    recipe = e2e_recipe(job.loss, job.dataset, {**own, **dict(overrides or {})})
    if getattr(job, "mode", "e2e") != "linear-init":
        return recipe, None
    return recipe, linear_init_recipe(job.loss, job.dataset, linear_overrides)
