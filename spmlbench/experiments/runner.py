"""Run jobs: skip finished ones, claim the rest one cohort at a time, train, write records.

Jobs are grouped into cohorts that can be trained together (same dataset, backbone, batch size,
epochs). Before training a cohort this process claims its jobs (lock files); jobs claimed by a live
process elsewhere are left to it and waited for at the end, so two ``run`` processes on one results
folder share the work, never run a job twice, and both finish. Records are written atomically
when a cohort ends; a killed run loses only the cohort in flight (its stale locks are taken over
by the next run).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spmlbench.errors import DataError
from spmlbench.experiments import locks
from spmlbench.experiments.executors import Executor, LocalExecutor, resolve_device
from spmlbench.experiments.jobs import JobSpec
from spmlbench.experiments.records import make_record, record_path, write_record
from spmlbench.train.linear import EpochProgress, LinearData, linear_data

MAX_COHORT = 96  # configs trained together at most (bounds memory; records land per cohort)
WAIT_S = 0.5


class RunProgress:
    """Callbacks the runner reports through (the CLI draws them with rich); all no-ops here."""

    def start(self, total: int, skipped: int) -> None:
        """``total`` jobs in the run, ``skipped`` of them already finished."""

    def cohort(self, jobs: Sequence[JobSpec]) -> None:
        """Training of ``jobs`` begins."""

    def epoch(self, event: EpochProgress) -> None:
        """One epoch of the current cohort ended."""

    def jobs_done(self, jobs: Sequence[JobSpec], results: Sequence[Any]) -> None:
        """Records of ``jobs`` were written."""

    def waiting(self, count: int) -> None:
        """``count`` jobs are being run by another process; waiting for their records."""


@dataclasses.dataclass
class RunSummary:
    """What a run did: jobs run here, skipped as finished, run by another process, failed."""

    ran: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    by_others: list[str] = dataclasses.field(default_factory=list)
    failed: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _Dataset:
    data: LinearData
    meta: dict[str, Any]
    features_sha256: str


def load_dataset(dataset: str, backbone: str, home: str | os.PathLike[str] | None = None) -> _Dataset:
    """Labels + cached features of a prepared dataset (DataError naming the command that fixes it)."""
    from spmlbench.data.store import load_labels
    from spmlbench.features.store import feature_sha256, load_features, read_metadata
    from spmlbench.paths import features_path

    labels = load_labels(dataset, home)
    feats = load_features(dataset, backbone, home=home)
    sha = str(read_metadata(features_path(dataset, backbone, home)).get("sha256") or feature_sha256(feats))
    meta = dict(labels.attrs.get("spmlbench", {}))
    data = linear_data(dataset, np.asarray(feats), labels)
    return _Dataset(data, meta, sha)


def _cohorts(jobs: Sequence[JobSpec]) -> list[list[JobSpec]]:
    groups: dict[tuple[Any, ...], list[JobSpec]] = {}
    for j in jobs:
        groups.setdefault(j.cohort_key(), []).append(j)
    out = []
    for members in groups.values():
        out.extend(members[i:i + MAX_COHORT] for i in range(0, len(members), MAX_COHORT))
    return out


def run_jobs(
    jobs: Sequence[JobSpec],
    out_dir: str | os.PathLike[str],
    *,
    home: str | os.PathLike[str] | None = None,
    device: str = "auto",
    force: bool = False,
    reference_loop: bool = False,
    experiment: str = "",
    progress: RunProgress | None = None,
    executor: Executor | None = None,
    loader: Callable[[str, str], _Dataset] | None = None,
) -> RunSummary:
    """Run every job that has no record yet (all with ``force``); see the module docstring."""
    out = Path(out_dir)
    progress = progress or RunProgress()
    jobs = list(dict.fromkeys(jobs))
    dev = resolve_device(device)
    executor = executor or LocalExecutor(dev, reference_loop=reference_loop)
    load = loader or (lambda ds, bb: load_dataset(ds, bb, home))
    summary = RunSummary()
    if force:
        todo = jobs
    else:
        todo = [j for j in jobs if not record_path(out, j.job_id).exists()]
        summary.skipped = [j.job_id for j in jobs if j not in set(todo)]
    progress.start(len(jobs), len(summary.skipped))
    cache: dict[tuple[str, str], _Dataset] = {}
    mine: set[str] = set()
    while todo:
        progressed = False
        for cohort in _cohorts(todo):
            claimed = [j for j in cohort if locks.claim(out, j.job_id)]
            if not force:  # finished by someone between our check and our claim
                for j in [j for j in claimed if record_path(out, j.job_id).exists()]:
                    locks.release(out, j.job_id)
                    claimed.remove(j)
            if not claimed:
                continue
            try:
                key = (claimed[0].dataset, claimed[0].backbone)
                if key not in cache:
                    cache[key] = load(*key)
                ds = cache[key]
                _check_protocol(claimed, ds.meta)
                progress.cohort(claimed)
                t0 = time.perf_counter()
                results = executor.train(ds.data, claimed, progress=progress.epoch)
                wall = (time.perf_counter() - t0) / len(claimed)
                for j, r in zip(claimed, results):
                    write_record(out, make_record(j, r, experiment=experiment, wall_s=wall, device=str(dev),
                                                  features_sha256=ds.features_sha256))
                    summary.ran.append(j.job_id)
                    if r.status != "ok":
                        summary.failed.append(j.job_id)
                    mine.add(j.job_id)
                progress.jobs_done(claimed, results)
            finally:
                for j in claimed:
                    locks.release(out, j.job_id)
            progressed = True
        todo = [j for j in todo if j.job_id not in mine and not _done_elsewhere(out, j)]
        if todo and not progressed:
            progress.waiting(len(todo))
            time.sleep(WAIT_S)
    summary.by_others = [j.job_id for j in jobs if j.job_id not in mine and j.job_id not in set(summary.skipped)]
    return summary


def _done_elsewhere(out: Path, job: JobSpec) -> bool:
    return record_path(out, job.job_id).exists() and not locks.held_by_other(out, job.job_id)


def _check_protocol(jobs: Sequence[JobSpec], meta: dict[str, Any]) -> None:
    proto = meta.get("protocol", {})
    for j in jobs:
        for name in ("label_seed", "split_seed"):
            have = proto.get(name)
            if have is not None and int(have) != getattr(j, name):
                raise DataError(f"{j.dataset}: prepared with {name}={have} but the job asks for {getattr(j, name)}; "
                                f"re-run 'spmlbench prepare {j.dataset}' with that seed or drop the override")
