"""Training recipes resolved for one (loss, dataset, mode): the one place that reads them.

Linear mode has two recipes (``data_manifests/recipes.toml``):

- ``cole`` (default): Cole et al. 2021's linear protocol for every loss: a fixed epoch budget, no
  early stop, and (lr, batch) selected per (loss, dataset) on val mAP from a grid
  (:class:`LinearProtocol`; the selection itself is :mod:`spmlbench.experiments.selection`);
- ``paper``: each paper's end-to-end recipe transposed to a linear head (:func:`paper_recipe`), not
  comparable across losses.

Modes ``e2e`` and ``linear-init`` always use each paper's own end-to-end recipe
(``data_manifests/recipes_e2e.toml``, :mod:`spmlbench.train.recipes_e2e`).
"""

from __future__ import annotations

import dataclasses
import functools
import tomllib
from pathlib import Path
from typing import Any

from spmlbench.errors import ConfigError

RECIPES_FILE = Path(__file__).resolve().parents[2] / "data_manifests" / "recipes.toml"
LINEAR_RECIPES = ("cole", "paper")
SELECT_RULES = ("first-seed", "each-seed", "mean")


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


@functools.cache
def _linear_table() -> dict[str, Any]:
    with open(RECIPES_FILE, "rb") as fh:
        return tomllib.load(fh)["linear"]


def _rule(table: dict[str, Any]) -> str:
    rule = str(table["early_stop"])
    return f"drop:{float(table['early_stop_drop']):g}" if rule == "drop" else rule


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


def e2e_job_recipe(loss: str, dataset: str) -> Recipe:
    """The paper's end-to-end recipe of ``loss`` on ``dataset`` (modes ``e2e`` and ``linear-init``)."""
    from spmlbench.train.recipes_e2e import e2e_recipe

    r = e2e_recipe(loss, dataset)
    f = r.job_fields()
    return Recipe(float(f["lr"]), int(f["batch_size"]), int(f["epochs"]), str(f["early_stop"]), r.source)


def recipe_source(loss: str, dataset: str, mode: str, linear_recipe: str = "cole") -> str:
    """Where a job's settings come from (for its record)."""
    if mode != "linear":
        return e2e_job_recipe(loss, dataset).source
    if linear_recipe == "paper":
        return paper_recipe(loss, dataset).source
    return linear_protocol().source


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` when it is one of ``choices``, else a one-line ConfigError naming the option."""
    if value not in choices:
        raise ConfigError(f"--{name} {value!r}: unknown; choose one of: {', '.join(choices)}")
    return value
