"""Run jobs: skip finished ones, claim the rest one cohort at a time, train, write records.

Jobs are grouped into cohorts that can be trained together (same dataset, backbone, batch size,
epochs); an end-to-end job (mode ``e2e`` / ``linear-init``) is a cohort of its own. Before training
a cohort this process claims its jobs (lock files); jobs claimed by a live process elsewhere are
left to it and waited for at the end, so two ``run`` processes on one results folder share the
work, never run a job twice, and both finish. Records are written atomically when a cohort ends;
a killed run loses only the cohort in flight (its stale locks are taken over by the next run).
End-to-end jobs train in ``<out>/work/<job_id>`` (best and last checkpoints), so a killed one
resumes from its last completed epoch.

``run_jobs`` works on any subset of jobs, in any process (the ray executor calls it inside its
workers): whether a job is finished is read from the results folder alone (its record, plus the
dumps' ``complete`` marker for jobs in ``dumps``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spmlbench.data.store import check_protocol
from spmlbench.errors import ConfigError, DataError
from spmlbench.experiments import locks
from spmlbench.experiments import records as rec
from spmlbench.experiments.executors import Executor, LocalExecutor, train_image_job
from spmlbench.experiments.jobs import JobSpec
from spmlbench.experiments.records import make_record, record_path, write_record
from spmlbench.runtime import resolve_device
from spmlbench.train.configs import EpochProgress, LinearData, linear_data, pseudo_sources
from spmlbench.modes import LINEAR

WORK_DIR = "work"

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

    def held(self, holders: Sequence[locks.Holder]) -> None:
        """The locks this run waits on changed: each names its file, its owner and how to clear it."""

    def remote(self, queued: int, running: int) -> None:
        """Jobs handed to other workers (Ray): how many wait for a worker and how many run."""

    def note(self, text: str) -> None:
        """A one-line message (the Ray cluster used, a task that failed for good); logged by default."""
        logging.getLogger("spmlbench").info(text)


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
    from spmlbench.data.label_checks import require_splits
    from spmlbench.data.store import load_labels
    from spmlbench.features.store import check_finite, feature_sha256, load_features, read_metadata
    from spmlbench.paths import features_path, labels_path

    labels = load_labels(dataset, home)
    require_splits(labels_path(dataset, home), labels["split"].to_numpy())
    feats = load_features(dataset, backbone, home=home)
    check_finite(features_path(dataset, backbone, home), feats)
    sha = str(read_metadata(features_path(dataset, backbone, home)).get("sha256") or feature_sha256(feats))
    meta = dict(labels.attrs.get("spmlbench", {}))
    data = linear_data(dataset, np.asarray(feats), labels)
    return _Dataset(data, meta, sha)


def cohorts(jobs: Sequence[JobSpec], lockstep: bool = False) -> list[list[JobSpec]]:
    """``jobs`` grouped into cohorts trained together (equal :meth:`JobSpec.cohort_key`, at most
    ``MAX_COHORT`` each; an end-to-end job is a cohort of its own, unless ``lockstep`` puts the jobs that share
    their batch order in one: :func:`spmlbench.experiments.executors.image_group_key`), in order of first
    appearance."""
    from spmlbench.experiments.executors import image_group_key

    groups: dict[tuple[Any, ...], list[JobSpec]] = {}
    for j in jobs:
        key = image_group_key(j) if lockstep and j.mode != "linear" else None
        groups.setdefault(("lockstep", key) if key is not None else j.cohort_key(), []).append(j)
    out = []
    for members in groups.values():
        out.extend(members[i:i + MAX_COHORT] for i in range(0, len(members), MAX_COHORT))
    return out


def work_dir(out_dir: str | os.PathLike[str], job_id: str) -> Path:
    """``<out>/work/<job_id>``: an end-to-end job's checkpoints (resume after a kill)."""
    return Path(out_dir) / WORK_DIR / job_id


def record_problem(row: Mapping[str, Any], job: JobSpec) -> str | None:
    """Why a readable record is not ``job``'s finished result (None when it is): it holds another job's id, or was
    made by another loss version or plugin source than the job asks for."""
    if row.get("job_id") != job.job_id:
        return f"holds job {row.get('job_id')}'s record, not this job's"
    version = row.get("loss_version")
    if (1 if version is None else int(version)) != job.loss_version:
        return f"was made by version {version} of loss {job.loss}, the job asks for version {job.loss_version}"
    if (row.get("loss_source") or None) != job.loss_source:
        return f"was made by another source of plugin loss {job.loss}"
    return None


def is_finished(out_dir: str | os.PathLike[str], job: JobSpec, dumps: Collection[str] = (),
                features: Mapping[tuple[str, str], str] | None = None,
                rejected: dict[str, str] | None = None) -> bool:
    """Whether ``job`` has a readable record that is its own (:func:`record_problem`) and, when it is in ``dumps``,
    its complete prediction dumps.

    An unreadable record (truncated, corrupt) or another job's record under this job's name is not finished: the
    job runs again and its record is rewritten (the reason goes into ``rejected`` by job id). ``features``:
    sha256 of the current feature cache per (dataset, backbone). A linear job's record made from other feature
    bytes (the cache was rebuilt, e.g. with ``--weights none``, which the job id does not see) is not finished:
    the job runs again on the current cache.
    """
    path = record_path(out_dir, job.job_id)
    if not path.exists():
        return False
    row = rec.read_record(path)
    if row is None:
        return False
    problem = record_problem(row, job)
    if problem is not None:
        if rejected is not None:
            rejected[job.job_id] = f"{path}: {problem}; re-running the job"
        return False
    sha = row.get("features_sha256")
    want = (features or {}).get((job.dataset, job.backbone)) if job.mode == LINEAR else None
    if want and sha not in (want, None, ""):
        return False
    return job.job_id not in dumps or rec.dumps_complete(out_dir, job.job_id)


def current_features(jobs: Sequence[JobSpec], home: str | os.PathLike[str] | None) -> dict[tuple[str, str], str]:
    """sha256 (from the cache metadata) of the feature cache of every (dataset, backbone) of linear ``jobs``."""
    from spmlbench.features.store import read_metadata
    from spmlbench.paths import features_path

    out: dict[tuple[str, str], str] = {}
    for key in {(j.dataset, j.backbone) for j in jobs if j.mode == LINEAR}:
        path = features_path(key[0], key[1], home)
        if path.exists():
            try:
                sha = read_metadata(path).get("sha256")
            except DataError:
                continue  # a broken cache fails with its own message when the cohort loads it
            if sha:
                out[key] = str(sha)
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
    workers: int | None = None,
    dumps: Collection[str] = (),
    keep_checkpoints: bool = True,
    processes: int | None = 1,
    verify: bool = False,
    lockstep: bool = False,
) -> RunSummary:
    """Run every job that has no record yet (all with ``force``); see the module docstring.

    ``dumps``: ids of jobs whose per-epoch val predictions are written to ``<out>/dumps`` (linear
    mode only). ``workers``: image decode workers of end-to-end jobs (default: the trainer's).
    ``keep_checkpoints``: keep an end-to-end job's ``<out>/work/<job_id>`` after its record.
    ``processes``: linear jobs on the CPU: split each cohort over this many processes (local executor;
    None: as many as pays off, see :func:`spmlbench.train.parallel.auto_processes`; the CLI's
    default); a number also splits end-to-end lockstep groups on the CPU without ``exact`` over this many
    processes (:mod:`spmlbench.train.lockstep_lanes`; None: not split). Workers are spawned: a script that asks for more than one needs the
    ``if __name__ == "__main__":`` guard. ``verify``: hash the layer4 map caches whole (by default
    whole up to 1 GiB, sampled blocks above; feature and pseudo-label caches are always hashed whole).
    ``lockstep``: end-to-end jobs that share their batch order train
    together on one input pipeline (:mod:`spmlbench.train.lockstep`; the numbers of separate runs, bit for bit
    on the CPU).
    """
    out = Path(out_dir)
    progress = progress or RunProgress()
    jobs = list(dict.fromkeys(jobs))
    dumps = frozenset(dumps)
    for j in jobs:
        if j.job_id in dumps and j.mode != "linear":
            raise ConfigError(f"dump_predictions: job {j.loss} on {j.dataset} is mode {j.mode}; prediction dumps "
                              "are written by mode linear only; drop dump_predictions or use mode linear")
    dev = resolve_device(device)
    if processes is not None and processes < 1:
        raise ConfigError(f"--processes {processes}: must be >= 1 (or auto)")
    own_executor = executor is None
    executor = executor or LocalExecutor(dev, reference_loop=reference_loop, processes=processes)
    try:
        return _run_all(jobs, out, executor, home=home, dev=dev, force=force, experiment=experiment,
                        progress=progress, loader=loader, workers=workers, dumps=dumps,
                        keep_checkpoints=keep_checkpoints, verify=verify, lockstep=lockstep, processes=processes)
    finally:
        if own_executor:
            executor.close()  # type: ignore[attr-defined]


def _run_all(jobs: list[JobSpec], out: Path, executor: Executor, *, home: str | os.PathLike[str] | None,
             dev: Any, force: bool, experiment: str, progress: RunProgress,
             loader: Callable[[str, str], _Dataset] | None, workers: int | None, dumps: frozenset[str],
             keep_checkpoints: bool, verify: bool = False, lockstep: bool = False,
             processes: int | None = 1) -> RunSummary:
    load = loader or (lambda ds, bb: load_dataset(ds, bb, home))
    summary = RunSummary()
    started = time.time()  # with force: a record written after this is another run's fresh re-run
    feats = current_features(jobs, home) if loader is None else {}
    if force:
        todo = jobs
    else:
        rejected: dict[str, str] = {}
        todo = [j for j in jobs if not is_finished(out, j, dumps, feats, rejected)]
        left = set(todo)
        summary.skipped = [j.job_id for j in jobs if j not in left]
        for text in rejected.values():
            progress.note(text)
    progress.start(len(jobs), len(summary.skipped))
    cache: dict[tuple[str, str], _Dataset] = {}
    mine: set[str] = set()
    seen: set[tuple[Path, str]] = set()  # the locks last reported as waited on
    while todo:
        progressed = False
        for cohort in cohorts(todo, lockstep):
            claimed = [j for j in cohort if locks.claim(out, j.job_id)]
            # finished by someone between our check and our claim (with force: re-run by another
            # forced run since this one started, so two concurrent --force runs never run a job twice)
            for j in [j for j in claimed if (_written_since(out, j, started) if force
                                             else is_finished(out, j, dumps, feats))]:
                locks.release(out, j.job_id)
                claimed.remove(j)
            if not claimed:
                continue
            try:
                # refresh the claims while training: another host judges them by their age
                with locks.heartbeat(out, [j.job_id for j in claimed]):
                    progress.cohort(claimed)
                    if claimed[0].mode == LINEAR:
                        results = _run_linear(claimed, out, cache, load, executor, progress, experiment, str(dev),
                                              dumps, home, verify)
                    else:
                        results = _run_images(claimed, out, home, dev, workers, progress, experiment, force,
                                              keep_checkpoints, processes)
                    for j, r in zip(claimed, results):
                        summary.ran.append(j.job_id)
                        if r.status != "ok":
                            summary.failed.append(j.job_id)
                        mine.add(j.job_id)
                    progress.jobs_done(claimed, results)
            finally:
                for j in claimed:
                    locks.release(out, j.job_id)
            progressed = True
        todo = [j for j in todo if j.job_id not in mine and not _done_elsewhere(out, j, dumps, feats)]
        if todo and not progressed:
            progress.waiting(len(todo))
            held = [h for h in (locks.holder(out, j.job_id) for j in todo) if h is not None]
            if {(h.path, h.owner) for h in held} != seen:
                seen = {(h.path, h.owner) for h in held}
                progress.held(held)
            time.sleep(WAIT_S)
    skipped = set(summary.skipped)
    summary.by_others = [j.job_id for j in jobs if j.job_id not in mine and j.job_id not in skipped]
    return summary


def _run_linear(claimed: list[JobSpec], out: Path, cache: dict[tuple[str, str], _Dataset],
                load: Callable[[str, str], _Dataset], executor: Executor, progress: RunProgress, experiment: str,
                device: str, dumps: frozenset[str], home: str | os.PathLike[str] | None = None,
                verify: bool = False) -> list[Any]:
    """Train one linear cohort, write its dumps and records."""
    from spmlbench.features.pseudo import load_pseudo
    from spmlbench.heads import method_of

    key = (claimed[0].dataset, claimed[0].backbone)
    if key not in cache:
        cache[key] = load(*key)
    ds = cache[key]
    check_protocol(claimed, ds.meta)
    for source in pseudo_sources(j.loss for j in claimed):  # CLIP pseudo-label caches, once per dataset
        if source not in ds.data.pseudo:
            ds.data.pseudo[source] = load_pseudo(key[0], source, home)
    if ds.data.maps is None and any(method_of(j.loss).reads_maps() for j in claimed):  # BoostLU, frozen
        from spmlbench.features.maps import load_maps

        ds.data.maps = load_maps(key[0], key[1], home, verify=verify)
    want = {i: j.job_id for i, j in enumerate(claimed) if j.job_id in dumps}
    kwargs: dict[str, Any] = {}
    if want:
        for job_id in want.values():
            rec.clear_dumps(out, job_id)
        kwargs["on_val"] = _dump_hook(out, want, ds.data)
    t0 = time.perf_counter()
    results = executor.train(ds.data, claimed, progress=progress.epoch, **kwargs)
    wall = (time.perf_counter() - t0) / len(claimed)
    for i, (j, r) in enumerate(zip(claimed, results)):
        if i in want:
            rec.finish_dumps(out, j.job_id, r.epochs_run)
        write_record(out, make_record(j, r, experiment=experiment, wall_s=wall, device=device,
                                      features_sha256=ds.features_sha256))
    return results


def _dump_hook(out: Path, want: dict[int, str], data: LinearData) -> Callable[[int, list[int], Any], None]:
    labels = data.y_val.cpu().numpy().astype(np.int8)
    observed = data.s_val.cpu().numpy().astype(np.int8)

    def hook(epoch: int, members: list[int], probs: Any) -> None:
        for row, i in enumerate(members):
            if i in want:
                rec.write_dump(out, want[i], epoch, probs[row].float().cpu().numpy(), labels, observed)

    return hook


def _run_images(jobs: list[JobSpec], out: Path, home: str | os.PathLike[str] | None, dev: Any, workers: int | None,
                progress: RunProgress, experiment: str, force: bool, keep_checkpoints: bool,
                processes: int | None = 1) -> list[Any]:
    """Train end-to-end jobs (one, or a lockstep group) in their work folders and write their records."""
    from spmlbench.experiments.executors import train_image_group

    works = [work_dir(out, j.job_id) for j in jobs]
    if force:
        for work in works:
            shutil.rmtree(work, ignore_errors=True)  # a forced job trains from scratch
    if len(jobs) == 1:
        results = [train_image_job(jobs[0], workdir=works[0], home=home, device=dev, workers=workers,
                                   progress=progress.epoch)]
    else:
        results = train_image_group(jobs, workdirs=works, home=home, device=dev, workers=workers, processes=processes,
                                    progress=progress.epoch)
    for job, res, work in zip(jobs, results, works):
        write_record(out, make_record(job, res, experiment=experiment, wall_s=res.wall_s, device=res.device))
        if not keep_checkpoints:
            shutil.rmtree(work, ignore_errors=True)
    return results


def _written_since(out: Path, job: JobSpec, since: float) -> bool:
    """Whether ``job``'s record was written at or after ``since`` (a time.time() value)."""
    try:
        return record_path(out, job.job_id).stat().st_mtime >= since
    except FileNotFoundError:
        return False


def _done_elsewhere(out: Path, job: JobSpec, dumps: Collection[str] = (),
                    features: Mapping[tuple[str, str], str] | None = None) -> bool:
    return is_finished(out, job, dumps, features) and not locks.held_by_other(out, job.job_id)
