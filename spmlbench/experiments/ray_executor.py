"""Scale-out executor: run an experiment's jobs as Ray tasks on a cluster (or a local Ray instance).

The driver (this process) skips jobs that already have a record, groups the rest into tasks and
submits them with their resource requests:

* ``linear`` jobs of one cohort (same dataset, backbone, seeds, batch size, epochs; at most
  :data:`~spmlbench.experiments.runner.MAX_COHORT` of them) form one task, trained together;
* ``e2e`` / ``linear-init`` jobs run one per task.

Every task calls :func:`spmlbench.experiments.runner.run_jobs` inside its Ray worker, so records
are claimed (lock files), written atomically and skipped when present exactly as in a local run:
the results folder may live on shared storage, a re-submitted experiment skips what is done, and
a local ``spmlbench run`` on the same folder can share the work. A task that raises is retried
(``max_retries``, application errors included) and then reported with its job ids and a one-line
error, while the other tasks go on. Ray is an optional extra (``pip install -e ".[ray]"``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spmlbench.errors import ConfigError
from spmlbench.experiments.jobs import JobSpec
from spmlbench.experiments.runner import RunProgress, RunSummary, cohorts, current_features, is_finished

POLL_S = 0.5  # driver progress refresh
INSTALL_HINT = "--executor ray: the ray extra is not installed; run pip install -e '.[ray]' (on every node)"


@dataclasses.dataclass
class RayRunSummary(RunSummary):
    """A :class:`RunSummary` plus ``errors``: one-line error of each job whose task failed for good."""

    errors: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Task:
    """Jobs run together by one Ray task, and what the task asks Ray for."""

    jobs: tuple[JobSpec, ...]
    num_cpus: float
    num_gpus: float

    @property
    def job_ids(self) -> list[str]:
        """Ids of the task's jobs, in order."""
        return [j.job_id for j in self.jobs]


def _check_options(device: str, gpus_per_job: float, cpus_per_job: float, max_retries: int) -> None:
    if device.startswith("cuda:"):
        raise ConfigError(f"--device {device}: Ray assigns each task its GPU; use --device cuda or auto")
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: unknown; choose auto, cpu or cuda")
    if gpus_per_job < 0 or cpus_per_job < 0:
        raise ConfigError("--gpus-per-job/--cpus-per-job: must be >= 0")
    if device == "cuda" and gpus_per_job == 0:
        raise ConfigError("--device cuda: Ray hides GPUs from tasks that request none; "
                          "add --gpus-per-job 1 (or a fraction)")
    if max_retries < 0:
        raise ConfigError(f"max_retries {max_retries}: must be >= 0")


def plan_tasks(jobs: Sequence[JobSpec], *, device: str = "auto", gpus_per_job: float = 0,
               cpus_per_job: float = 1) -> list[Task]:
    """Group ``jobs`` into tasks: a linear cohort (<= MAX_COHORT jobs) per task, other modes one job per task.

    Tasks ask for ``cpus_per_job`` CPUs and, unless ``device`` is ``cpu``, ``gpus_per_job`` GPUs.
    """
    gpus = 0.0 if device == "cpu" else float(gpus_per_job)
    groups = sorted(cohorts(list(dict.fromkeys(jobs))), key=lambda g: g[0].mode != "linear")  # linear first
    return [Task(tuple(g), float(cpus_per_job), gpus) for g in groups]


def _run_task(jobs: Sequence[JobSpec], out_dir: str, home: str | None, device: str, force: bool, experiment: str,
              run_kwargs: dict[str, Any], plugins: Sequence[Any] = ()) -> RunSummary:
    """Body of one Ray task: the local runner on this worker (a task given no GPU runs ``auto`` on the CPU);
    plugin losses' files arrive as text (``plugins``) and are installed first."""
    import ray

    from spmlbench.experiments.runner import run_jobs
    from spmlbench.losses.plugins import install_all

    install_all(plugins)
    if device == "auto" and not ray.get_gpu_ids():
        device = "cpu"
    return run_jobs(jobs, out_dir, home=home, device=device, force=force, experiment=experiment, **run_kwargs)


def one_line_error(exc: BaseException) -> str:
    """``Type: message`` of the exception a task raised (Ray's wrapper and traceback removed), one line."""
    cause = getattr(exc, "cause", None)
    err = cause if isinstance(cause, BaseException) else exc
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def import_ray() -> Any:
    """The ``ray`` module, or a ConfigError saying how to install the extra."""
    try:
        import ray
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    return ray


def connect(address: str | None, say: Callable[[str], None]) -> bool:
    """Make sure this process is connected to Ray; True if this call connected (the caller then shuts down).

    Already initialised: used as is. ``"auto"``: the running cluster (``RAY_ADDRESS`` or the latest
    one started on this machine), else a new local instance (with a note). ``HOST:PORT`` or
    ``ray://HOST:PORT``: that cluster. ``None``: a new local instance.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address == "auto":
        try:
            ray.init(address="auto", log_to_driver=True)
            say(f"ray: connected to the running cluster ({_resources_text(ray)})")
            return True
        except ConnectionError:
            ray.init(address="local")
            say("ray: no running cluster found (address auto); "
                        f"started a local instance ({_resources_text(ray)})")
            return True
    if address is None:
        ray.init(address="local")
        say(f"ray: started a local instance ({_resources_text(ray)})")
        return True
    try:
        ray.init(address=address)
    except ConnectionError as exc:
        raise ConfigError(f"--address {address}: cannot connect to a Ray cluster there ({exc}); "
                          "start one with 'ray start --head' or use --address auto") from None
    say(f"ray: connected to {address} ({_resources_text(ray)})")
    return True


def _resources_text(ray: Any) -> str:
    res = ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    return f"{nodes} node(s), {res.get('CPU', 0):g} CPUs, {res.get('GPU', 0):g} GPUs"


def _check_feasible(ray: Any, tasks: Sequence[Task]) -> None:
    """A task no node can hold would wait forever: say so up front."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    for kind, need in (("GPU", max((t.num_gpus for t in tasks), default=0)),
                       ("CPU", max((t.num_cpus for t in tasks), default=0))):
        have = max((float(r.get(kind, 0)) for r in nodes), default=0.0)
        if need > have:
            flag = "--gpus-per-job" if kind == "GPU" else "--cpus-per-job"
            fix = "use --device cpu" if kind == "GPU" else f"lower {flag}"
            raise ConfigError(f"{flag} {need:g}: no node of the Ray cluster has {need:g} {kind}s (largest: {have:g}); "
                              f"{fix} or add such nodes")


def _locked(out: Path) -> set[str]:
    try:
        return {e.name[:-5] for e in os.scandir(out / "locks") if e.name.endswith(".lock")}
    except FileNotFoundError:
        return set()


def run_jobs_ray(
    jobs: Sequence[JobSpec],
    out_dir: str | os.PathLike[str],
    *,
    home: str | os.PathLike[str] | None = None,
    device: str = "auto",
    force: bool = False,
    experiment: str = "",
    address: str | None = "auto",
    gpus_per_job: float = 0,
    cpus_per_job: float = 1,
    max_retries: int = 2,
    progress: RunProgress | None = None,
    **run_kwargs: Any,
) -> RayRunSummary:
    """Run every job without a record (all with ``force``) as Ray tasks; see the module docstring.

    ``home`` (default: each worker's own SPMLBENCH_HOME) and ``out_dir`` must name the same data on
    every node. ``run_kwargs`` go to :func:`~spmlbench.experiments.runner.run_jobs` in the workers
    (they must pickle). Jobs of tasks that failed for good are in ``failed`` and ``errors``.
    ``progress``: the runner's :class:`~spmlbench.experiments.runner.RunProgress` (``start``, ``jobs_done``
    per finished task, ``remote`` with the queued / running counts, ``note`` for the cluster used and a
    task that failed for good); None reports nothing but the notes (to the ``spmlbench`` logger).
    """
    _check_options(device, gpus_per_job, cpus_per_job, max_retries)
    ray = import_ray()
    out = Path(out_dir).resolve()
    home_s = str(Path(home).resolve()) if home is not None else None
    progress = progress or RunProgress()
    jobs = list(dict.fromkeys(jobs))
    summary = RayRunSummary()
    dumps = frozenset(run_kwargs.get("dumps", ()))
    feats = {} if force else current_features(jobs, home)
    todo = jobs if force else [j for j in jobs if not is_finished(out, j, dumps, feats)]
    pending = set(todo)
    summary.skipped = [j.job_id for j in jobs if j not in pending]
    tasks = plan_tasks(todo, device=device, gpus_per_job=gpus_per_job, cpus_per_job=cpus_per_job)
    progress.start(len(jobs), len(summary.skipped))
    if not tasks:
        return summary
    started = connect(address, progress.note)
    try:
        _check_feasible(ray, tasks)
        from spmlbench.losses.plugins import sources_for

        remote = ray.remote(_run_task)
        refs = {}
        for t in tasks:
            name = f"spmlbench:{t.jobs[0].dataset}:{t.jobs[0].mode}:{len(t.jobs)}jobs"
            opts = remote.options(num_cpus=t.num_cpus, num_gpus=t.num_gpus, max_retries=max_retries,
                                  retry_exceptions=True, name=name)
            refs[opts.remote(list(t.jobs), str(out), home_s, device, force, experiment, run_kwargs,
                             sources_for({j.loss for j in t.jobs}))] = t
        _drive(ray, refs, out, summary, progress)
    finally:
        if started:
            ray.shutdown()
    order = {j.job_id: i for i, j in enumerate(jobs)}
    for name in ("ran", "by_others", "failed"):
        setattr(summary, name, sorted(dict.fromkeys(getattr(summary, name)), key=lambda k: order.get(k, len(order))))
    return summary


def _drive(ray: Any, refs: dict[Any, Task], out: Path, summary: RayRunSummary, progress: RunProgress) -> None:
    """Wait for the tasks, merging their summaries and reporting failures; Ctrl-C cancels the rest."""
    pending = list(refs)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S)
            for ref in ready:
                task = refs[ref]
                try:
                    result: RunSummary = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - any task failure is reported, never fatal
                    error = one_line_error(exc)
                    summary.failed.extend(task.job_ids)
                    summary.errors.update(dict.fromkeys(task.job_ids, error))
                    shown = ", ".join(task.job_ids[:4]) + (f" and {len(task.jobs) - 4} more" if len(task.jobs) > 4 else "")
                    progress.note(f"ray: task failed (jobs {shown}): {error}")
                else:
                    summary.ran.extend(result.ran)
                    summary.by_others.extend(result.by_others + result.skipped)  # finished elsewhere meanwhile
                    summary.failed.extend(result.failed)
                progress.jobs_done(task.jobs, [])
            in_flight = [k for r in pending for k in refs[r].job_ids]
            locked = _locked(out) if in_flight else set()
            running = sum(k in locked for k in in_flight)
            progress.remote(len(in_flight) - running, running)
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        raise
