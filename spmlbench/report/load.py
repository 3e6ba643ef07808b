"""Inputs of a report: published reference numbers, and runs joined to their records on job ids.

A run manifest (:mod:`spmlbench.experiments.run_manifest`) lists, for every table cell, the job ids of its
(lr, batch) points and the one its run selected. :func:`load_runs` reads exactly those records: a cell is its
selected job's record, or missing / failed / not selected (counted, never filled from another record). Nothing
here plans a run or matches records on hyperparameters or settings.

``runs`` is the tidy table every report table is built from: one row per cell with an ok record (the record's
columns plus ``group``, ``coords``, ``row`` and ``run_id``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from spmlbench.errors import ConfigError, DataError
from spmlbench.experiments.spec import Experiment
from spmlbench.paths import shipped

REFERENCE_COLUMNS = ["method", "label", "dataset", "setting", "map", "std", "source", "note"]
MISSING_COLUMNS = ["run_id", "group", "dataset", "loss", "seed", "coords", "status", "job_id"]


def reference_path() -> Path:
    """Path of the published-results data file (``spmlbench/data_manifests/reference_results.csv``)."""
    return shipped("reference_results.csv")


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


def normalise_mode(mode: Any) -> str:
    """``linear_init`` and ``linear-init`` are the same mode."""
    return str(mode).replace("_", "-")


def choose_runs(manifests: Sequence[dict[str, Any]], run_ids: Sequence[str] = (), all_runs: bool = False,
                experiment: str | None = None, where: str = "") -> list[dict[str, Any]]:
    """The manifests a report shows: ``run_ids`` (unknown ids: ConfigError), every one with ``all_runs``, the
    latest of ``experiment``, else the latest run (``manifests`` oldest first)."""
    if run_ids:
        by_id = {m["run_id"]: m for m in manifests}
        unknown = [r for r in run_ids if r not in by_id]
        if unknown:
            raise ConfigError(f"--run {unknown[0]}: no such run in {where}; 'spmlbench runs --results {where}' lists "
                              "them")
        return [by_id[r] for r in dict.fromkeys(run_ids)]
    if experiment is not None:
        from spmlbench.experiments.spec import load_experiment

        name = load_experiment(experiment).name  # an unknown name: ConfigError listing the shipped ones
        mine = [m for m in manifests if (m.get("experiment") or {}).get("name") == name]
        if not mine:
            raise DataError(f"{where}: no run of experiment {name!r}; run 'spmlbench run --experiment {experiment} "
                            f"--out {where}' (finished jobs are reused) or see 'spmlbench runs --results {where}'")
        return list(mine if all_runs else mine[-1:])
    return list(manifests if all_runs else manifests[-1:])


def experiment_of(manifest: dict[str, Any]) -> Experiment | None:
    """The experiment a run ran, from the TOML text its manifest stores (narrowed as the run narrowed it)."""
    from spmlbench.experiments.spec import parse_experiment

    block = manifest.get("experiment")
    if not block:
        return None
    path = Path(block.get("path") or f"{block['name']}.toml")
    exp = parse_experiment(path, tomllib.loads(block["toml"]))
    return dataclasses.replace(exp, datasets=tuple(block["datasets"]), seeds=tuple(block["seeds"]), mode=block["mode"])


def _records(out_dir: Path, job_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The readable records of ``job_ids`` whose own job id is their file's (others count as missing)."""
    from spmlbench.experiments.records import read_record, record_path

    out = {}
    for jid in job_ids:
        path = record_path(out_dir, jid)
        row = read_record(path) if path.exists() else None
        if row is not None and row.get("job_id") == jid:
            out[jid] = row
    return out


def _cell_key(run_id: str, cell: dict[str, Any]) -> str:
    """The selection group of a cell: every seed of one (run, group, row, dataset, mode, grid point)."""
    return json.dumps([run_id, cell["group"], cell["row"], cell["dataset"], cell["mode"], cell["coords"]],
                      sort_keys=True, default=str)


@dataclasses.dataclass
class RunTables:
    """What the chosen runs give the report: ``runs`` (one row per cell with an ok record), ``missing`` (cells
    without one: status ``failed``, ``missing`` or ``not selected``), ``grid`` (every point of the cells that
    selected among several: the selection tables), the manifests and the job ids they list."""

    runs: pd.DataFrame
    missing: pd.DataFrame
    grid: pd.DataFrame
    manifests: list[dict[str, Any]]
    job_ids: set[str]


def load_runs(out_dir: str | os.PathLike[str], manifests: Sequence[dict[str, Any]]) -> RunTables:
    """Join the cells of ``manifests`` to their records on job ids (see the module docstring)."""
    from spmlbench.experiments.selection import score

    out_dir = Path(out_dir)
    wanted = {jid for m in manifests for c in m["cells"] for jid in c["jobs"]}
    recs = _records(out_dir, wanted)
    rows, missing, grid = [], [], []
    for m in manifests:
        rid, rule = m["run_id"], m["select"]
        for cell in m["cells"]:
            base = {"group": cell["group"], "coords": dict(cell["coords"]), "row": cell["row"], "run_id": rid}
            chosen = cell.get("selected")
            if len(cell["jobs"]) > 1:
                for jid in cell["jobs"]:
                    if jid in recs:
                        r = recs[jid]
                        grid.append({**r, **base, "group": _cell_key(rid, cell), "score": score(r["status"], r["val_map"]),
                                     "selected": jid == chosen, "selection": json.dumps({"rule": rule})})
            rec = recs.get(chosen) if chosen else None
            status = "not selected" if not chosen else "missing" if rec is None else str(rec["status"])
            if status != "ok":
                missing.append({"run_id": rid, "group": cell["group"], "dataset": cell["dataset"], "loss": cell["row"],
                                "seed": int(cell["seed"]), "coords": dict(cell["coords"]), "status": status,
                                "job_id": chosen or ""})
                continue
            rows.append({**rec, **base})
    runs = _frame(rows)
    return RunTables(runs, pd.DataFrame(missing, columns=MISSING_COLUMNS), _frame(grid), list(manifests), wanted)


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["hp"] = [json.loads(h) if isinstance(h, str) else dict(h or {}) for h in df["hparams"]]
    df["mode"] = df["mode"].map(normalise_mode)
    return df


def combine_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Several runs in one table: a cell two runs share with the same job appears once; a row key that two runs
    fill with different jobs gets the run id in its label (``gr [run-3f2a...]``), so no cell mixes runs."""
    if runs.empty or runs["run_id"].nunique() < 2:
        return runs
    key = ["group", "row", "mode", "dataset", "seed"]
    coords = runs["coords"].map(lambda c: json.dumps(c, sort_keys=True, default=str))
    frame = runs.assign(_coords=coords)
    frame = frame.drop_duplicates(subset=[*key, "_coords", "job_id"]).reset_index(drop=True)
    clash = frame.groupby([*key, "_coords"])["job_id"].transform("nunique") > 1
    rows = frame.loc[clash, ["group", "row", "mode"]].drop_duplicates()
    split = {tuple(r) for r in rows.itertuples(index=False)}
    frame["row"] = [f"{r} [{rid}]" if (g, r, md) in split else r
                    for g, r, md, rid in zip(frame["group"], frame["row"], frame["mode"], frame["run_id"])]
    return frame.drop(columns="_coords")


def unlisted_records(out_dir: str | os.PathLike[str], listed: set[str]) -> pd.DataFrame:
    """Records of ``out_dir`` that no run manifest lists (folders from before manifests): all columns, ``hp``."""
    from spmlbench.experiments.records import load_records

    out_dir = Path(out_dir)
    df = load_records(out_dir) if (out_dir / "records").is_dir() else pd.DataFrame()
    if df.empty:
        return df
    df = df[~df["job_id"].isin(listed)]
    return _frame(df.to_dict("records"))
