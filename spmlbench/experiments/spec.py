"""Experiment specs: a versioned TOML file per table or figure, expanded into job dicts.

A spec lives in ``spmlbench/data_manifests/experiments/<name>.toml`` (or any path ending in ``.toml``)::

    version = 1
    name = "table1"
    description = "..."
    mode = "linear"                      # linear | e2e | linear-init
    datasets = ["voc", "coco"]           # run by default
    optional_datasets = ["digits"]       # allowed with --datasets, not run by default
    seeds = [0, 1, 2]
    overrides = { lr = 1e-4, batch_size = 8 }   # optional JobSpec fields for every group (a group's own win);
                                               # lr and batch_size fix the linear (lr, batch) selection grid

    [report]                             # optional settings for `spmlbench report`
    seed_noise = { default = 0.5, cub = 1.0 }

    [[groups]]                           # one block per set of jobs
    name = "main"
    losses = ["an", "gr"]
    hparams = { q3 = 1.5 }               # optional, passed to build_loss
    overrides = { epochs = 8 }           # optional JobSpec fields
    datasets = ["voc"]                   # optional restriction of the experiment's datasets
    dump_predictions = true              # optional: per-epoch val prediction dumps
    baseline = true                      # optional: the reference row of an ablation table
    preview = false                      # optional: not run on the optional datasets (e.g. the digits preview)
    axes = [ { name = "wT", param = "beta", index = 1, values = [0.0, 2.0] } ]   # optional grid

A grid group runs the Cartesian product of its axes; an axis with ``index`` sets one element of
a list hyperparameter whose full value comes from the group's ``hparams``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from spmlbench.errors import ConfigError
from spmlbench.experiments.jobs import MAX_BATCH, MAX_EPOCHS
from spmlbench.modes import MODES
from spmlbench.paths import shipped

SPEC_VERSION = 1
# JobSpec fields an experiment group may override (dataset/loss/hparams/seed/mode come from the spec).
OVERRIDE_FIELDS = (
    "label_seed",
    "split_seed",
    "backbone",
    "epochs",
    "batch_size",
    "lr",
    "val",
    "early_stop",
)
_TOP_KEYS = {"version", "name", "description", "mode", "datasets", "optional_datasets", "seeds", "report", "groups",
             "overrides"}
_GROUP_KEYS = {"name", "description", "losses", "hparams", "overrides", "datasets", "dump_predictions", "baseline", "axes",
               "preview"}
_AXIS_KEYS = {"name", "param", "index", "values"}


def experiments_dir() -> Path:
    """Return the folder holding the shipped experiment specs (``spmlbench/data_manifests/experiments``)."""
    return shipped("experiments")


def available_experiments() -> list[str]:
    """Names of the shipped experiment specs, sorted."""
    d = experiments_dir()
    return sorted(p.stem for p in d.glob("*.toml")) if d.is_dir() else []


@dataclasses.dataclass(frozen=True)
class Axis:
    """One grid axis: ``param`` (or its element ``index``) takes each of ``values``."""

    name: str
    param: str
    values: tuple[Any, ...]
    index: int | None = None


@dataclasses.dataclass(frozen=True)
class Group:
    """A set of jobs sharing losses, hyperparameters and overrides (optionally a grid)."""

    name: str
    losses: tuple[str, ...]
    description: str = ""
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    datasets: tuple[str, ...] | None = None
    dump_predictions: bool = False
    baseline: bool = False
    axes: tuple[Axis, ...] = ()
    preview: bool = True  # False: left out on the optional datasets

    def points(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Grid points as (coordinates by axis name, hparams); one point for a group without axes."""
        if not self.axes:
            return [({}, copy.deepcopy(self.hparams))]
        out = []
        for combo in itertools.product(*(a.values for a in self.axes)):
            hp = copy.deepcopy(self.hparams)
            coords = {}
            for axis, value in zip(self.axes, combo):
                coords[axis.name] = value
                if axis.index is None:
                    hp[axis.param] = value
                else:
                    base = list(hp[axis.param])
                    base[axis.index] = value
                    hp[axis.param] = base
            out.append((coords, hp))
        return out


@dataclasses.dataclass(frozen=True)
class Cell:
    """One expanded job with where it belongs: its group and grid coordinates."""

    group: str
    coords: dict[str, Any]
    job: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """A loaded experiment spec, already narrowed to the requested datasets and seeds."""

    name: str
    version: int
    description: str
    mode: str
    datasets: tuple[str, ...]
    seeds: tuple[int, ...]
    groups: tuple[Group, ...]
    optional_datasets: tuple[str, ...] = ()
    report: dict[str, Any] = dataclasses.field(default_factory=dict)
    path: Path | None = None

    def group_datasets(self, group: Group) -> list[str]:
        """Datasets a group runs on: the experiment's, narrowed by the group's list (optional ones pass, unless the
        group says ``preview = false``)."""
        if group.datasets is None:
            out = list(self.datasets)
        else:
            out = [d for d in self.datasets if d in group.datasets or d in self.optional_datasets]
        return out if group.preview else [d for d in out if d not in self.optional_datasets]

    def cells(self) -> list[Cell]:
        """Every job with its group and grid coordinates, in spec order (group, dataset, point, loss, seed)."""
        out: list[Cell] = []
        for group in self.groups:
            for dataset in self.group_datasets(group):
                for coords, hp in group.points():
                    for loss in group.losses:
                        for seed in self.seeds:
                            job: dict[str, Any] = {
                                "dataset": dataset,
                                "loss": loss,
                                "hparams": copy.deepcopy(hp),
                                "seed": int(seed),
                                "mode": self.mode,
                            }
                            job.update(copy.deepcopy(group.overrides))
                            if group.dump_predictions:
                                job["dump_predictions"] = True
                            out.append(Cell(group.name, dict(coords), job))
        return out

    def jobs(self) -> list[dict[str, Any]]:
        """Job field dicts (dataset, loss, hparams, seed, mode, overrides, dump_predictions), duplicates removed."""
        seen: set[str] = set()
        out = []
        for cell in self.cells():
            key = repr(sorted((k, repr(v)) for k, v in cell.job.items()))
            if key not in seen:
                seen.add(key)
                out.append(cell.job)
        return out

    def seed_noise(self, dataset: str) -> float:
        """The gap (mAP points) under which two methods are within seed noise on ``dataset``."""
        noise = self.report.get("seed_noise", {})
        return float(noise.get(dataset, noise.get("default", 0.5)))


def _fail(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {problem}; fix the experiment spec (see spmlbench/experiments/spec.py)")


def _str_list(path: Path, where: str, value: Any, *, allow_empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _fail(path, f"{where} must be a list of names")
    if not value and not allow_empty:
        raise _fail(path, f"{where} is empty")
    return tuple(value)


def _parse_axis(path: Path, gname: str, raw: Any, hparams: dict[str, Any]) -> Axis:
    where = f"group {gname!r} axis"
    if not isinstance(raw, dict):
        raise _fail(path, f"{where} must be a table")
    unknown = set(raw) - _AXIS_KEYS
    if unknown:
        raise _fail(path, f"{where} has unknown keys {sorted(unknown)}")
    param, values, index = raw.get("param"), raw.get("values"), raw.get("index")
    name = raw.get("name", param)
    if not isinstance(param, str) or not isinstance(name, str):
        raise _fail(path, f"{where} needs a 'param' name")
    if not isinstance(values, list) or not values:
        raise _fail(path, f"{where} {name!r} needs a non-empty 'values' list")
    if index is not None:
        base = hparams.get(param)
        if not isinstance(index, int) or not isinstance(base, list) or not 0 <= index < len(base):
            raise _fail(path, f"{where} {name!r}: index needs a list value of {param!r} in the group's hparams")
    return Axis(name=name, param=param, values=tuple(values), index=index)


SEED_LIMIT = 2**32  # numpy's RandomState takes seeds below this


def _override_problem(key: str, value: Any) -> str | None:
    """Why ``value`` is not a valid override of job field ``key`` (None when it is)."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if key in ("label_seed", "split_seed"):
        return None if is_int and 0 <= value < SEED_LIMIT else f"must be a whole number in [0, {SEED_LIMIT})"
    if key in ("epochs", "batch_size"):
        top = MAX_EPOCHS if key == "epochs" else MAX_BATCH
        return None if is_int and 1 <= value <= top else f"must be a whole number in [1, {top}]"
    if key == "lr":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < float("inf")
        return None if ok else "must be a finite positive number"
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _parse_group(path: Path, raw: Any, i: int) -> Group:
    if not isinstance(raw, dict):
        raise _fail(path, f"groups[{i}] must be a table")
    gname = raw.get("name")
    if not isinstance(gname, str) or not gname:
        raise _fail(path, f"groups[{i}] needs a 'name'")
    unknown = set(raw) - _GROUP_KEYS
    if unknown:
        raise _fail(path, f"group {gname!r} has unknown keys {sorted(unknown)}")
    losses = _str_list(path, f"group {gname!r} losses", raw.get("losses"))
    hparams = raw.get("hparams", {})
    overrides = raw.get("overrides", {})
    if not isinstance(hparams, dict) or not isinstance(overrides, dict):
        raise _fail(path, f"group {gname!r}: hparams and overrides must be tables")
    bad = set(overrides) - set(OVERRIDE_FIELDS)
    if bad:
        raise _fail(path, f"group {gname!r} overrides unknown job fields {sorted(bad)} (allowed: {', '.join(OVERRIDE_FIELDS)})")
    for key, value in overrides.items():
        problem = _override_problem(key, value)
        if problem:
            raise _fail(path, f"group {gname!r} overrides {key} = {value!r}: {problem}")
    datasets = raw.get("datasets")
    if datasets is not None:
        datasets = _str_list(path, f"group {gname!r} datasets", datasets)
    for flag in ("dump_predictions", "baseline", "preview"):
        if not isinstance(raw.get(flag, False), bool):
            raise _fail(path, f"group {gname!r}: {flag} must be true or false")
    axes_raw = raw.get("axes", [])
    if not isinstance(axes_raw, list):
        raise _fail(path, f"group {gname!r}: axes must be a list of tables")
    axes = tuple(_parse_axis(path, gname, a, hparams) for a in axes_raw)
    return Group(
        name=gname,
        losses=losses,
        description=str(raw.get("description", "")),
        hparams=dict(hparams),
        overrides=dict(overrides),
        datasets=datasets,
        dump_predictions=bool(raw.get("dump_predictions", False)),
        baseline=bool(raw.get("baseline", False)),
        axes=axes,
        preview=bool(raw.get("preview", True)),
    )


def parse_experiment(path: Path, raw: dict[str, Any]) -> Experiment:
    """Validate a parsed TOML document and build the (un-narrowed) Experiment; errors name ``path``."""
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise _fail(path, f"unknown keys {sorted(unknown)}")
    version = raw.get("version")
    if version != SPEC_VERSION:
        raise _fail(path, f"version is {version!r}, this spmlbench reads version {SPEC_VERSION}")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(path, "missing 'name'")
    mode = raw.get("mode", "linear")
    if mode not in MODES:
        raise _fail(path, f"mode {mode!r} is not one of {', '.join(MODES)}")
    datasets = _str_list(path, "datasets", raw.get("datasets"))
    optional = _str_list(path, "optional_datasets", raw.get("optional_datasets", []), allow_empty=True)
    seeds = raw.get("seeds")
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                           and 0 <= s < SEED_LIMIT for s in seeds):
        raise _fail(path, f"seeds must be a non-empty list of whole numbers in [0, {SEED_LIMIT})")
    report = raw.get("report", {})
    if not isinstance(report, dict):
        raise _fail(path, "[report] must be a table")
    groups_raw = raw.get("groups")
    if not isinstance(groups_raw, list) or not groups_raw:
        raise _fail(path, "needs at least one [[groups]] block")
    groups = tuple(_parse_group(path, g, i) for i, g in enumerate(groups_raw))
    common = raw.get("overrides", {})
    if not isinstance(common, dict) or set(common) - set(OVERRIDE_FIELDS):
        raise _fail(path, f"overrides must be a table of job fields ({', '.join(OVERRIDE_FIELDS)})")
    for key, value in common.items():  # the top-level table, checked as a group's (blamed on --lr before)
        problem = _override_problem(key, value)
        if problem:
            raise _fail(path, f"overrides {key} = {value!r}: {problem}")
    groups = tuple(dataclasses.replace(g, overrides={**common, **g.overrides}) for g in groups)
    names = [g.name for g in groups]
    if len(set(names)) != len(names):
        raise _fail(path, "group names must be unique")
    return Experiment(
        name=name,
        version=int(version),
        description=str(raw.get("description", "")),
        mode=mode,
        datasets=datasets,
        seeds=tuple(int(s) for s in seeds),
        groups=groups,
        optional_datasets=optional,
        report=dict(report),
        path=path,
    )


def _resolve_path(name: str | os.PathLike[str]) -> Path:
    text = os.fspath(name)
    if text.endswith(".toml"):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"{path}: experiment spec not found; give an existing .toml file or a shipped name")
        return path
    path = experiments_dir() / f"{text}.toml"
    if not path.is_file():
        known = ", ".join(available_experiments()) or "(none found)"
        raise ConfigError(f"experiment {text!r}: unknown; choose one of: {known}")
    return path


def load_experiment(
    name: str | os.PathLike[str],
    *,
    datasets: Sequence[str] | None = None,
    seeds: Iterable[int] | None = None,
    mode: str | None = None,
) -> Experiment:
    """Load a named experiment (or a ``.toml`` path), narrowed to ``datasets``/``seeds``/``mode`` if given.

    Unknown names raise ConfigError listing the shipped experiments; an invalid spec raises
    ConfigError naming the file; a dataset the spec does not allow raises ConfigError.
    """
    path = _resolve_path(name)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise _fail(path, f"not valid TOML ({exc})") from None
    exp = parse_experiment(path, raw)
    changes: dict[str, Any] = {}
    if datasets is not None:
        allowed = list(exp.datasets) + [d for d in exp.optional_datasets if d not in exp.datasets]
        requested = list(dict.fromkeys(datasets))
        bad = [d for d in requested if d not in allowed]
        if bad or not requested:
            raise ConfigError(
                f"experiment {exp.name!r}: datasets {bad or requested} not in this spec; choose from: {', '.join(allowed)}"
            )
        changes["datasets"] = tuple(requested)
    if seeds is not None:
        s = tuple(dict.fromkeys(int(x) for x in seeds))
        if not s:
            raise ConfigError(f"experiment {exp.name!r}: empty seed list; give at least one seed")
        changes["seeds"] = s
    if mode is not None:
        if mode not in MODES:
            raise ConfigError(f"experiment {exp.name!r}: mode {mode!r} unknown; choose one of: {', '.join(MODES)}")
        changes["mode"] = mode
    return dataclasses.replace(exp, **changes) if changes else exp
