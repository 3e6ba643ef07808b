"""Ray scale-out executor: same records as in-process, bounded retries then a report, re-runs skip finished jobs."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from spmlbench.errors import ConfigError
from spmlbench.experiments.jobs import JobSpec, expand_jobs
from spmlbench.experiments.records import load_records, record_path
from spmlbench.experiments.runner import MAX_COHORT, RunProgress, run_jobs
from test_linear_support import write_dataset

pytestmark = pytest.mark.ray

META = {"protocol": {"label_seed": 1200, "split_seed": 1200}, "expected_positives": {"computed": 1.6, "paper": None}}
METRICS = ["status", "epochs_run", "best_epoch", "val_map", "train_loss", "test_map", "test_ap", "hparams"]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A local Ray instance with 2 CPUs for this module."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, address="local", log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared tiny ``digits``-like dataset (labels + resnet50 features) in its own data home."""
    home = tmp_path_factory.mktemp("ray_home")
    write_dataset(home, name="digits", n=160)
    return home


def sweep(backbone: str = "resnet50", losses: Sequence[str] = ("an", "gr", "role")) -> list[JobSpec]:
    """3 losses x 2 seeds x 3 epochs on digits: two linear cohorts (batch 8: an, gr; batch 16: role)."""
    return expand_jobs(dataset="digits", losses=list(losses), seeds=[0, 1], meta=META, backbone=backbone, epochs=3,
                       recipe="paper")


def plain(values: Any) -> list[Any]:
    """A record column as plain Python values (list columns come back as numpy arrays)."""
    return [v.tolist() if hasattr(v, "tolist") else v for v in values]


class Recorder(RunProgress):
    """A runner RunProgress remembering what the Ray driver reported."""

    def __init__(self) -> None:
        self.started: list[tuple[int, int]] = []
        self.finished = 0
        self.remotes: list[tuple[int, int]] = []
        self.notes: list[str] = []

    def start(self, total: int, skipped: int) -> None:
        self.started.append((total, skipped))

    def jobs_done(self, jobs: Sequence[Any], results: Sequence[Any]) -> None:
        self.finished += len(jobs)

    def remote(self, queued: int, running: int) -> None:
        self.remotes.append((queued, running))

    def note(self, text: str) -> None:
        self.notes.append(text)


def counting_loader(counter_dir: Path, home: Path) -> Any:
    """A runner ``loader`` that appends one line per dataset load to ``<counter_dir>/<backbone>.txt``.

    Defined as a closure so Ray ships it by value to the workers (the tests folder is not importable there).
    """

    def load(dataset: str, backbone: str) -> Any:
        from spmlbench.experiments.runner import load_dataset

        with open(counter_dir / f"{backbone}.txt", "a") as fh:
            fh.write(f"{os.getpid()}\n")
        return load_dataset(dataset, backbone, home)

    return load


def test_plan_tasks_groups_linear_cohorts_and_isolates_e2e() -> None:
    from spmlbench.experiments.ray_executor import plan_tasks

    linear = sweep()
    e2e = expand_jobs(dataset="digits", losses=["an", "gr"], seeds=[0], meta=META, backbone="resnet50", mode="e2e",
                      epochs=3)
    tasks = plan_tasks(linear + e2e, device="auto", gpus_per_job=0.5, cpus_per_job=2)
    groups = [sorted((j.loss, j.seed) for j in t.jobs) for t in tasks]
    assert groups == [[("an", 0), ("an", 1), ("gr", 0), ("gr", 1)], [("role", 0), ("role", 1)],
                      [("an", 0)], [("gr", 0)]]
    assert [t.jobs[0].mode for t in tasks] == ["linear", "linear", "e2e", "e2e"]
    assert {(t.num_cpus, t.num_gpus) for t in tasks} == {(2.0, 0.5)}
    assert {t.num_gpus for t in plan_tasks(linear, device="cpu", gpus_per_job=1)} == {0.0}
    big = expand_jobs(dataset="digits", losses=["gr"], seeds=range(MAX_COHORT + 3), meta=META, backbone="resnet50",
                      recipe="paper")
    assert [len(t.jobs) for t in plan_tasks(big)] == [MAX_COHORT, 3]


def test_options_are_checked_before_anything_runs(tmp_path: Path, ray_local: Any, data_home: Path) -> None:
    from spmlbench.experiments.ray_executor import run_jobs_ray

    with pytest.raises(ConfigError, match="--gpus-per-job"):
        run_jobs_ray(sweep(), tmp_path, home=data_home, device="cuda", gpus_per_job=0, progress=Recorder())
    with pytest.raises(ConfigError, match="no node of the Ray cluster has 1 GPUs"):  # the test instance has no GPU
        run_jobs_ray(sweep(), tmp_path, home=data_home, device="auto", gpus_per_job=1, progress=Recorder())
    with pytest.raises(ConfigError, match="Ray assigns"):
        run_jobs_ray(sweep(), tmp_path, home=data_home, device="cuda:1", gpus_per_job=1, progress=Recorder())
    assert not (tmp_path / "records").exists()


def test_records_match_in_process_and_rerun_skips(tmp_path: Path, ray_local: Any, data_home: Path) -> None:
    from spmlbench.experiments.ray_executor import run_jobs_ray

    jobs = sweep()
    local = run_jobs(jobs, tmp_path / "local", home=data_home, device="cpu", experiment="x")
    assert len(local.ran) == 6
    rec = Recorder()
    summary = run_jobs_ray(jobs, tmp_path / "ray", home=data_home, experiment="x", progress=rec)
    assert summary.ran == [j.job_id for j in jobs] and not summary.failed and not summary.errors
    assert rec.started == [(6, 0)] and rec.finished == 6 and rec.remotes[-1] == (0, 0)
    ours = load_records(tmp_path / "ray").set_index("job_id").sort_index()
    theirs = load_records(tmp_path / "local").set_index("job_id").sort_index()
    assert list(ours.index) == sorted(j.job_id for j in jobs)
    for col in METRICS:
        assert plain(ours[col]) == plain(theirs[col]), col
    assert set(ours["device"]) == {"cpu"} and set(ours["experiment"]) == {"x"}
    assert ours["test_map"].nunique() > 1  # real, differing results, not a constant
    assert not list((tmp_path / "ray" / "locks").iterdir())

    # re-running skips every finished job; deleting one record re-runs exactly that job
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "records").iterdir()}
    again = run_jobs_ray(jobs, tmp_path / "ray", home=data_home, progress=Recorder())
    assert not again.ran and again.skipped == [j.job_id for j in jobs]
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "ray" / "records").iterdir()} == before
    gone = jobs[4]
    record_path(tmp_path / "ray", gone.job_id).unlink()
    runner_progress = Recorder()
    third = run_jobs_ray(jobs, tmp_path / "ray", home=data_home, experiment="x", progress=runner_progress)
    assert third.ran == [gone.job_id] and len(third.skipped) == 5
    assert runner_progress.started == [(6, 5)] and runner_progress.finished == 1
    redo = load_records(tmp_path / "ray").set_index("job_id").loc[gone.job_id]
    assert plain([redo["val_map"]]) == plain([theirs.loc[gone.job_id, "val_map"]])


def test_failing_task_is_retried_then_reported(tmp_path: Path, ray_local: Any, data_home: Path) -> None:
    from spmlbench.experiments.ray_executor import run_jobs_ray

    good = sweep(losses=("gr",))
    broken = sweep(backbone="nobackbone", losses=("gr",))  # no features cached for it: DataError in the worker
    counters = tmp_path / "counters"
    counters.mkdir()
    rec = Recorder()
    summary = run_jobs_ray(good + broken, tmp_path / "res", home=data_home, max_retries=2, progress=rec,
                           loader=counting_loader(counters, data_home))
    attempts = (counters / "nobackbone.txt").read_text().splitlines()
    assert len(attempts) == 3  # first try + max_retries
    assert len((counters / "resnet50.txt").read_text().splitlines()) == 1  # the good task ran once
    broken_ids = [j.job_id for j in broken]
    assert summary.ran == [j.job_id for j in good]
    assert summary.failed == broken_ids and set(summary.errors) == set(broken_ids)
    error = summary.errors[broken_ids[0]]
    assert error.startswith("DataError: ") and "nobackbone" in error and "\n" not in error
    assert f"ray: task failed (jobs {', '.join(broken_ids)}): {error}" in rec.notes and rec.finished == 4
    assert sorted(load_records(tmp_path / "res")["job_id"]) == sorted(j.job_id for j in good)
    assert not list((tmp_path / "res" / "locks").iterdir())  # the failed attempts released their claims


def test_a_plugin_loss_runs_on_ray_workers(tmp_path: Path, ray_local: Any, data_home: Path) -> None:
    """The plugin file is shipped to the workers as text: the same records as in process."""
    from spmlbench.experiments.ray_executor import run_jobs_ray
    from spmlbench.losses import LOSSES
    from spmlbench.losses.plugins import load_plugin

    example = Path(__file__).resolve().parents[1] / "examples" / "my_loss.py"
    load_plugin(str(example))
    try:
        jobs = sweep(losses=("an_weighted",))
        assert {j.loss_source for j in jobs} == {LOSSES.get("an_weighted").source_hash}
        local = run_jobs(jobs, tmp_path / "local", home=data_home, device="cpu")
        summary = run_jobs_ray(jobs, tmp_path / "ray", home=data_home, progress=Recorder())
        assert len(local.ran) == 2 and summary.ran == [j.job_id for j in jobs] and not summary.failed
        ours = load_records(tmp_path / "ray").set_index("job_id").sort_index()
        theirs = load_records(tmp_path / "local").set_index("job_id").sort_index()
        for col in METRICS:
            assert plain(ours[col]) == plain(theirs[col]), col
    finally:
        del LOSSES._entries["an_weighted"]


def test_selection_runs_on_ray_like_in_process(tmp_path: Path, ray_local: Any, data_home: Path) -> None:
    """Cole's protocol through Ray: stage 1 (the grid on the first seed), selection from the records,
    stage 2 (the other seed at the selected point): the same records and marks as in process."""
    from spmlbench.experiments.ray_executor import run_jobs_ray
    from spmlbench.experiments.selection import run_selected

    jobs = expand_jobs(dataset="digits", losses=["an", "gr"], seeds=[0, 1], meta=META, backbone="resnet50",
                       epochs=2, lr_grid=[1e-2, 1e-4], batch_grid=[8])
    assert len(jobs) == 8
    runs = {
        "local": lambda todo: run_jobs(todo, tmp_path / "local", home=data_home, device="cpu"),
        "ray": lambda todo: run_jobs_ray(todo, tmp_path / "ray", home=data_home, progress=Recorder()),
    }
    chosen = {name: run_selected(jobs, tmp_path / name, "first-seed", fn)[1] for name, fn in runs.items()}
    assert chosen["ray"] == chosen["local"] and len(chosen["ray"]) == 4  # 2 losses x 2 seeds at one point each
    ours = load_records(tmp_path / "ray").set_index("job_id").sort_index()
    theirs = load_records(tmp_path / "local").set_index("job_id").sort_index()
    assert len(ours) == 6  # 2 losses x 2 points on seed 0, then seed 1 at the selected point
    for col in [*METRICS, "selected", "selection"]:
        assert plain(ours[col]) == plain(theirs[col]), col
    assert ours["selected"].sum() == 4
