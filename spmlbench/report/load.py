"""Inputs of a report: result records, published reference numbers, and records matched to a spec.

Records follow "Jobs and result records" in docs/architecture.md (one Parquet row per job in
``<results>/records/<job_id>.parquet``). ``runs`` is the tidy table every report table is built
from: one row per ok record that belongs to the report, with ``group``, ``coords`` and ``row``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from spmlbench.errors import DataError
from spmlbench.experiments.spec import Experiment

REFERENCE_COLUMNS = ["method", "label", "dataset", "setting", "map", "std", "source", "note"]
_JOB_KEYS = {"dataset", "loss", "hparams", "seed", "mode", "dump_predictions"}


def reference_path() -> Path:
    """Path of the published-results data file (``data_manifests/reference_results.csv``)."""
    return Path(__file__).resolve().parents[2] / "data_manifests" / "reference_results.csv"


def load_reference(path: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Read the published numbers: one row per (method, dataset, setting, source); std NaN if none."""
    path = Path(path) if path is not None else reference_path()
    try:
        df = pd.read_csv(path, dtype={"std": "float64", "map": "float64"}, keep_default_na=False, na_values={"std": [""]})
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read reference results ({exc}); restore the file from the repository") from None
    missing = [c for c in REFERENCE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; expected {', '.join(REFERENCE_COLUMNS)}")
    return df[REFERENCE_COLUMNS]


def load_results(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All result records under ``out_dir`` (:func:`spmlbench.experiments.records.load_records`), hparams
    parsed to ``hp``."""
    from spmlbench.experiments.records import load_records

    out_dir = Path(out_dir)
    df = load_records(out_dir) if (out_dir / "records").is_dir() else pd.DataFrame()
    if df.empty:
        return df
    df = df.copy()
    df["hp"] = [json.loads(h) if isinstance(h, str) else dict(h or {}) for h in df["hparams"]]
    df["mode"] = df["mode"].map(normalise_mode)
    return with_selection(df)


def with_selection(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` with the (lr, batch) selection recomputed from them (columns ``group``, ``score``,
    ``selected``, ``selection``; each group under the rule its run recorded, else ``first-seed``)."""
    from spmlbench.experiments.selection import recorded_rules, select

    if "selection" not in records.columns:
        records = records.assign(selection=None)
    return select(records, recorded_rules(records))


def normalise_mode(mode: Any) -> str:
    """``linear_init`` and ``linear-init`` are the same mode."""
    return str(mode).replace("_", "-")


def values_equal(a: Any, b: Any) -> bool:
    """Equality for hyperparameter values: numbers to 1e-9 relative, lists element-wise."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b or a == b and type(a) is type(b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def loss_defaults(loss: str, dataset: str | None = None) -> dict[str, Any]:
    """Checkable hyperparameter defaults of a loss on ``dataset``: the paper's, with the dataset's own where the
    manifest sets them (GR's beta on COCO, EM's alpha, ...), as the trainer resolves them; empty if unavailable.

    Defaults that stay None (EPR's expected positives on a dataset without a published value, resolved
    from the labels) are left out: a record is not compared on them.
    """
    from spmlbench.losses import dataset_defaults, loss_info

    try:
        info = loss_info(loss)
        per_ds = dataset_defaults(loss, dataset)
    except Exception:  # unknown loss or registry not ready: match on explicit hparams only
        return {}
    raw = info.get("defaults") if isinstance(info, Mapping) else getattr(info, "defaults", None)
    if not isinstance(raw, Mapping):
        return {}
    return {k: v for k, v in {**raw, **per_ds}.items() if v is not None}


def at_defaults(hp: Mapping[str, Any], defaults: Mapping[str, Any]) -> bool:
    """Whether the hyperparameters ``hp`` hold ``defaults`` (:func:`loss_defaults`) wherever they name them."""
    return all(k not in hp or values_equal(hp[k], v) for k, v in defaults.items())


def _job_matches(job: dict[str, Any], rec: Mapping[str, Any], defaults: dict[str, Any]) -> bool:
    if rec["dataset"] != job["dataset"] or rec["loss"] != job["loss"]:
        return False
    if int(rec["seed"]) != int(job["seed"]) or normalise_mode(rec["mode"]) != normalise_mode(job["mode"]):
        return False
    hp, explicit = rec["hp"], job["hparams"]
    if any(k not in hp or not values_equal(hp[k], v) for k, v in explicit.items()):
        return False
    if not at_defaults(hp, {k: v for k, v in defaults.items() if k not in explicit}):
        return False
    for key, value in job.items():
        if key in _JOB_KEYS:
            continue
        if key in rec and not values_equal(rec[key], value):
            return False
    return True


_POINT_KEYS = ("lr", "batch_size")


def _fixed_point(job: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """The (lr, batch) keys a cell fixes (an experiment's ``overrides``)."""
    return tuple((k, job[k]) for k in _POINT_KEYS if k in job)


def _eligible(records: pd.DataFrame, fixed: tuple[tuple[str, Any], ...]) -> list[bool]:
    """Which records a cell fixing ``fixed`` may use: without a fixed key the records' own (lr, batch)
    selection (column ``selected``); with one, the selection made again among the records at that point
    (so a fixed-point experiment finds its runs next to a selected grid of the same loss)."""
    if "selected" not in records.columns:
        return [True] * len(records)
    if not fixed:
        return records["selected"].astype(bool).tolist()
    at = [all(k in rec and values_equal(rec[k], v) for k, v in fixed) for rec in records.to_dict("records")]
    sub = records[at].drop(columns=["group", "score", "selected", "selection"], errors="ignore")
    if sub.empty:
        return at
    chosen = set(sub.index[with_selection(sub)["selected"].astype(bool)])
    return [i in chosen for i in records.index]


def _one_settings_per_row(cells: list[Any], recs: list[dict[str, Any]], candidates: dict[int, list[int]],
                          experiment: str) -> None:
    """Narrow each cell's candidate records to the one settings key of its row (:mod:`.cell_settings`)."""
    from spmlbench.report.cell_settings import choose_settings, expected, settings_key

    rows: dict[tuple[str, str, str, str], list[int]] = {}
    for ci, cell in enumerate(cells):
        key = (cell.group, cell.job["dataset"], cell.job["loss"], json.dumps(cell.coords, sort_keys=True, default=str))
        rows.setdefault(key, []).append(ci)
    keys = [settings_key(r) for r in recs]
    for cis in rows.values():
        options = [ri for ci in cis for ri in candidates.get(ci, [])]
        chosen = choose_settings(recs, keys, options, expected(cells[cis[0]].job), experiment)
        for ci in cis:
            if ci in candidates:
                candidates[ci] = [ri for ri in candidates[ci] if keys[ri] == chosen]


def match_experiment(records: pd.DataFrame, exp: Experiment) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Assign ok records to the experiment's cells.

    Returns ``(runs, missing)``: ``runs`` has one row per matched cell (record columns plus
    ``group``, ``coords``, ``row``), ``missing`` lists cells without an ok record (group,
    dataset, loss, seed, coords). With a ``selected`` column (:func:`with_selection`), a cell uses
    the selected (lr, batch) point, or the point it fixes (:func:`_eligible`). A record matching
    several cells goes to the most specific one (most explicit hparams). A row's seeds share one set of
    training settings (:func:`spmlbench.report.cell_settings.choose_settings`: the experiment's own
    epochs, early stop and val first); several records for one cell: the one from this experiment,
    then the newest.
    """
    cells = exp.cells()
    records = records.reset_index(drop=True)
    allowed = {f: _eligible(records, f) for f in {_fixed_point(c.job) for c in cells}}
    ok_mask = (records["status"] == "ok").tolist() if not records.empty else []
    ok = records[ok_mask] if not records.empty else records
    positions = [i for i, keep in enumerate(ok_mask) if keep]
    recs = ok.to_dict("records") if not ok.empty else []
    # A cell wants its explicit hparams and the defaults of its dataset for the rest (so a no-k record
    # never fills the plain GR cell); without the registry, explicit hparams only.
    defaults = {key: loss_defaults(*key) for key in {(c.job["loss"], c.job["dataset"]) for c in cells}}
    candidates: dict[int, list[int]] = {}
    for ri, rec in enumerate(recs):
        hits = [ci for ci, c in enumerate(cells) if allowed[_fixed_point(c.job)][positions[ri]]
                and _job_matches(c.job, rec, defaults[c.job["loss"], c.job["dataset"]])]
        if not hits:
            continue
        best = max(len(cells[ci].job["hparams"]) for ci in hits)
        for ci in hits:
            if len(cells[ci].job["hparams"]) == best:
                candidates.setdefault(ci, []).append(ri)
    _one_settings_per_row(cells, recs, candidates, exp.name)
    rows, missing = [], []
    for ci, cell in enumerate(cells):
        options = candidates.get(ci)
        if not options:
            missing.append(
                {"group": cell.group, "dataset": cell.job["dataset"], "loss": cell.job["loss"],
                 "seed": cell.job["seed"], "coords": cell.coords}
            )
            continue
        chosen = max(options, key=lambda ri: (recs[ri].get("experiment") == exp.name, str(recs[ri].get("created", ""))))
        row = dict(recs[chosen])
        row.update(group=cell.group, coords=cell.coords, row=cell.job["loss"])
        rows.append(row)
    runs = pd.DataFrame(rows)
    # One cell per (group, dataset, loss, coords, seed): duplicates in a spec are dropped.
    if not runs.empty:
        key = runs[["group", "dataset", "loss", "seed"]].astype(str).agg("/".join, axis=1) + runs["coords"].map(repr)
        runs = runs[~key.duplicated()].reset_index(drop=True)
    miss = pd.DataFrame(missing, columns=["group", "dataset", "loss", "seed", "coords"])
    if not miss.empty:
        key = miss[["group", "dataset", "loss", "seed"]].astype(str).agg("/".join, axis=1) + miss["coords"].map(repr)
        miss = miss[~key.duplicated()].reset_index(drop=True)
    return runs, miss


def _canon(hp: dict[str, Any]) -> str:
    return json.dumps(hp, sort_keys=True, default=str)


def _config(rec: Mapping[str, Any]) -> dict[str, Any]:
    """A record's hyperparameters plus the training settings that change its result (a run with other
    values is another row)."""
    from spmlbench.report.cell_settings import settings

    return {**rec["hp"], **settings(rec)}


def runs_without_experiment(records: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All ok records as runs; a loss run with several configs gets one row per config.

    A config is the hyperparameters plus the training settings (epochs, val, early stop, backbone,
    ...; lr and batch size are the selected point). Per (loss, mode, dataset) the config at the loss's
    defaults on that dataset (:func:`loss_defaults`; among several, or without one, the most frequent)
    keeps the plain loss name, so a loss whose defaults differ by dataset (EM's alpha, EPR's expected
    positives) is one row and a grid beside it never takes its name; other configs are labelled
    ``loss (key=value, ...)`` with
    the keys that differ. ``missing`` holds the (dataset, loss, seed) combinations of the seen
    datasets x rows x seeds without an ok record.
    """
    ok = records[records["status"] == "ok"].copy() if not records.empty else pd.DataFrame()
    if ok.empty:
        return ok, pd.DataFrame(columns=["group", "dataset", "loss", "seed", "coords"])
    ok["canon"] = [_canon(_config(r)) for r in ok.to_dict("records")]
    labels: dict[tuple[str, str, str, str], str] = {}
    for (loss, mode, dataset), sub in ok.groupby(["loss", "mode", "dataset"], sort=False):
        counts = sub["canon"].value_counts(sort=False)
        defaults = loss_defaults(str(loss), str(dataset))
        main_canon = max(counts.index, key=lambda c: (at_defaults(json.loads(c), defaults), counts[c],
                                                      -list(counts.index).index(c)))
        main = json.loads(main_canon)
        for canon in counts.index:
            cfg = json.loads(canon)
            diff = {k: v for k, v in cfg.items() if k not in main or not values_equal(main[k], v)}
            labels[(loss, mode, dataset, canon)] = (
                loss if not diff else f"{loss} ({', '.join(f'{k}={v}' for k, v in sorted(diff.items()))})")
    ok["row"] = [labels[key] for key in zip(ok["loss"], ok["mode"], ok["dataset"], ok["canon"])]
    ok["group"] = "all"
    ok["coords"] = [{} for _ in range(len(ok))]
    ok = ok.sort_values("created" if "created" in ok.columns else "job_id", kind="stable")
    ok = ok.drop_duplicates(subset=["row", "dataset", "mode", "seed"], keep="last").reset_index(drop=True)
    missing = []
    for mode, sub in ok.groupby("mode", sort=False):
        have = set(zip(sub["row"], sub["dataset"], sub["seed"]))
        for row in sub["row"].unique():
            for ds in sub["dataset"].unique():
                for seed in sorted(sub["seed"].unique()):
                    if (row, ds, seed) not in have:
                        missing.append({"group": "all", "dataset": ds, "loss": row, "seed": int(seed), "coords": {}})
    return ok, pd.DataFrame(missing, columns=["group", "dataset", "loss", "seed", "coords"])
