"""Run manifests: what one ``spmlbench run`` planned and selected, ``<out>/runs/<run_id>.json``.

A manifest holds the request as given (command line, options, the experiment's name and TOML text with its
sha256, the plugin files and their hashes), the resolved plan (each job's settings, recipe and loss version;
each table cell with the job ids of its (lr, batch) points) and, once the run has selected, the job each
cell reports. The report renders manifests by joining on job ids (:mod:`spmlbench.report.load`): a table is
the record of what ran, never a reconstruction.

The run id is a hash of the request (the planning options, the selection rule, the experiment's TOML and the
plugins' sources): the same command run again maps to the same id and updates its manifest; an edited
experiment or plugin is a new run. Manifests are written atomically (write to a temporary file, rename).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from spmlbench.atomic import atomic_path
from spmlbench.errors import DataError
from spmlbench.experiments.jobs import JobSpec
from spmlbench.experiments.plan import Plan, RunRequest

RUNS_DIR = "runs"
FORMAT = 1
# planning options that do not shape the jobs (where they run, how fast) stay out of the run id
_NOT_IN_ID = ("home",)


def runs_dir(out_dir: str | os.PathLike[str]) -> Path:
    """``<out>/runs``."""
    return Path(out_dir) / RUNS_DIR


def manifest_path(out_dir: str | os.PathLike[str], run_id: str) -> Path:
    """``<out>/runs/<run_id>.json``."""
    return runs_dir(out_dir) / f"{run_id}.json"


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _experiment_block(plan: Plan, request: RunRequest) -> dict[str, Any] | None:
    """The experiment's name, file, TOML text and sha256, narrowed datasets, seeds and mode."""
    if not plan.experiment or not request.experiment:
        return None
    from spmlbench.experiments.spec import load_experiment

    exp = load_experiment(request.experiment, datasets=request.datasets or None, seeds=request.seeds,
                          mode=request.mode)
    text = exp.path.read_text(encoding="utf-8") if exp.path is not None else ""
    return {"name": exp.name, "path": str(exp.path or ""), "sha256": _sha256_text(text), "toml": text,
            "datasets": list(exp.datasets), "seeds": list(exp.seeds), "mode": exp.mode}


def _plugins(jobs: Iterable[JobSpec]) -> list[dict[str, str]]:
    """The plugin losses the jobs use: name, file and source sha256 (16 hex)."""
    from spmlbench.losses import LOSSES

    out = {}
    for j in jobs:
        if j.loss_source and j.loss not in out:
            out[j.loss] = {"loss": j.loss, "origin": LOSSES.get(j.loss).origin if j.loss in LOSSES else "",
                           "sha256": j.loss_source}
    return sorted(out.values(), key=lambda p: p["loss"])


def run_id(request: RunRequest, select: str, experiment: Mapping[str, Any] | None,
           plugins: Sequence[Mapping[str, str]]) -> str:
    """``<experiment or 'run'>-<12 hex>``: a hash of the request, the rule, the experiment's TOML and the plugins."""
    req = {k: v for k, v in dataclasses.asdict(request).items() if k not in _NOT_IN_ID}
    key = {"request": req, "select": select, "experiment": (experiment or {}).get("sha256"),
           "plugins": [(p["loss"], p["sha256"]) for p in plugins]}
    digest = _sha256_text(json.dumps(key, sort_keys=True, default=str))[:12]
    return f"{(experiment or {}).get('name') or 'run'}-{digest}"


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _titles(jobs: Iterable[JobSpec]) -> dict[str, str]:
    from spmlbench.losses import LOSSES

    return {j.loss: LOSSES.get(j.loss).title for j in jobs if j.loss in LOSSES}


def new_manifest(plan: Plan, request: RunRequest, *, command: str, options: Mapping[str, Any] | None = None,
                 trained: Sequence[JobSpec] = ()) -> dict[str, Any]:
    """The manifest of a planned run (no selection yet); ``trained``: the jobs the run trains before selecting."""
    from spmlbench.experiments.records import git_rev, versions

    experiment = _experiment_block(plan, request)
    plugins = _plugins(plan.jobs)
    rid = run_id(request, plan.select, experiment, plugins)
    now = _now()
    return {
        "format": FORMAT, "run_id": rid, "created": now, "updated": now, "status": "running",
        "command": command, "request": dataclasses.asdict(request), "options": dict(options or {}),
        "select": plan.select, "experiment": experiment, "plugins": plugins, "titles": _titles(plan.jobs),
        "jobs": {j.job_id: {**j.to_dict(), "loss_version": j.loss_version, "recipe": j.recipe} for j in plan.jobs},
        "cells": [c.to_dict() for c in plan.cells],
        "trained": [j.job_id for j in trained],
        "dumps": sorted(plan.dumps),
        "versions": versions(), "git_rev": git_rev(), "host": socket.gethostname(),
    }


def with_selection(manifest: dict[str, Any], chosen: Iterable[JobSpec | str], trained: Iterable[JobSpec | str],
                   status: str = "finished") -> dict[str, Any]:
    """``manifest`` with each cell's reported job (its only job, or the one of its points the run selected;
    None when none was), the jobs the run trained and its status."""
    ids = {c if isinstance(c, str) else c.job_id for c in chosen}
    out = dict(manifest)
    cells = []
    for cell in manifest["cells"]:
        jobs = cell["jobs"]
        picked = [j for j in jobs if j in ids]
        selected = jobs[0] if len(jobs) == 1 else (picked[0] if picked else None)
        cells.append({**cell, "selected": selected})
    out.update(cells=cells, status=status, updated=_now(),
               trained=list(dict.fromkeys(t if isinstance(t, str) else t.job_id for t in trained)))
    return out


def write_manifest(out_dir: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    """Write ``manifest`` atomically to ``<out>/runs/<run_id>.json``; an earlier manifest of the same run keeps its
    creation time."""
    path = manifest_path(out_dir, manifest["run_id"])
    if path.exists():
        try:
            manifest = {**manifest, "created": read_manifest(path)["created"]}
        except DataError:
            pass  # an unreadable earlier manifest is replaced
    try:
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n",
                                 encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot write the run manifest ({exc.strerror or exc}); free space or fix the "
                        "permissions of --out") from None
    return path


_REQUIRED = ("run_id", "created", "updated", "command", "select", "jobs", "cells")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """One manifest (DataError naming the file when it is not one)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable run manifest ({exc}); delete it and re-run its command") from None
    if not isinstance(data, dict) or any(k not in data for k in _REQUIRED) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a run manifest of this spmlbench (format {FORMAT}); delete it and re-run "
                        "its command")
    if data["run_id"] != path.stem:
        raise DataError(f"{path}: holds run {data['run_id']!r}, not {path.stem!r}; restore the file or delete it "
                        "and re-run its command")
    return data


def list_manifests(out_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every run manifest of ``out_dir``, oldest update first."""
    files = sorted(runs_dir(out_dir).glob("*.json")) if runs_dir(out_dir).is_dir() else []
    return sorted((read_manifest(f) for f in files), key=lambda m: (m["updated"], m["run_id"]))


def job_states(out_dir: str | os.PathLike[str], job_ids: Iterable[str]) -> dict[str, str]:
    """``ok``, ``failed`` or ``missing`` (no readable record of that job) per job id."""
    from spmlbench.experiments.records import read_record, record_path

    out = {}
    for jid in job_ids:
        path = record_path(out_dir, jid)
        row = read_record(path) if path.exists() else None
        out[jid] = "missing" if row is None or row.get("job_id") != jid else str(row.get("status"))
    return out
