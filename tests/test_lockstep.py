"""Lockstep end-to-end training equals separate runs, bit for bit on the CPU with ``exact``, and resumes after a
kill (the fast mode: tests/test_lockstep_fast.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from spmlbench.train.lockstep import can_join, lockstep_key, train_lockstep
from test_e2e import SIZE, Job, _run, expected_positives, micro, recipe, tiny  # noqa: F401 - fixtures

LOSSES = ("an", "gr", "role", "em", "ll_r")


def _jobs(home: Path, backbone: str, epochs: int = 2, seed: int = 0, exact: bool = False) -> list:
    hp = {"role": expected_positives(home)}
    return [dataclasses.replace(Job(loss=loss, hparams=hp.get(loss), backbone=backbone, epochs=epochs, seed=seed,
                                    lr=1e-3), exact=exact)
            for loss in LOSSES]


def _lockstep(home: Path, root: Path, jobs: list, **kw) -> list:
    return train_lockstep(jobs, [recipe(j) for j in jobs], [root / f"{i}" for i in range(len(jobs))], home=home,
                          device="cpu", workers=0, image_size=SIZE, **kw)


def test_lockstep_equals_separate_runs_bit_for_bit(tiny: Path, micro: str, tmp_path: Path) -> None:
    jobs = _jobs(tiny, micro, epochs=3, exact=True)
    assert all(can_join(j) for j in jobs) and len({lockstep_key(j, recipe(j)) for j in jobs}) == 1
    together = _lockstep(tiny, tmp_path / "lock", jobs, exact=True)
    for i, job in enumerate(jobs):
        alone = _run(tiny, tmp_path / "alone" / str(i), job, exact=True)
        got = together[i]
        assert got.status == "ok" and alone.status == "ok", (job.loss, got.error, alone.error)
        assert got.val_map == alone.val_map and got.train_loss == alone.train_loss, job.loss
        assert got.test_map == alone.test_map and got.test_ap == alone.test_ap, job.loss
        assert got.best_epoch == alone.best_epoch


def test_a_head_of_its_own_trains_apart(tiny: Path, micro: str) -> None:
    assert not can_join(Job(loss="boostlu_ll_r", backbone=micro))
    assert not can_join(Job(loss="an", backbone=micro, mode="linear-init"))
    a, b = Job(loss="an", backbone=micro, seed=0), Job(loss="an", backbone=micro, seed=1)
    assert lockstep_key(a, recipe(a)) != lockstep_key(b, recipe(b))  # another seed: another batch order


def test_a_killed_group_resumes_every_job(tiny: Path, micro: str, tmp_path: Path) -> None:
    jobs = _jobs(tiny, micro, epochs=3)
    whole = _lockstep(tiny, tmp_path / "whole", jobs)

    def kill(epoch: int, step: int, _n: int) -> None:
        if epoch == 2 and step == 2:
            raise KeyboardInterrupt  # mid-epoch, as SIGKILL would leave the work folders
    with pytest.raises(KeyboardInterrupt):
        _lockstep(tiny, tmp_path / "killed", jobs, progress=kill)
    (tmp_path / "killed" / "1" / "last.pt").unlink()  # one job behind the others: it catches up alone
    resumed = _lockstep(tiny, tmp_path / "killed", jobs)
    for a, b in zip(whole, resumed):  # the fast mode: a job's kernels are its own, so the numbers are the same
        assert (a.val_map, a.train_loss, a.test_map, a.test_ap) == (b.val_map, b.train_loss, b.test_map, b.test_ap)


def test_the_runner_groups_jobs_and_records_the_same_numbers(tiny: Path, micro: str, tmp_path: Path) -> None:
    """run_jobs(lockstep=True) trains one group per seed and writes the records --no-lockstep writes (exact)."""
    import pyarrow.parquet as pq

    from spmlbench.experiments.runner import RunProgress, cohorts, run_jobs
    from spmlbench.train.configs import EpochProgress

    jobs = [*_jobs(tiny, micro, epochs=2, seed=0, exact=True), *_jobs(tiny, micro, epochs=2, seed=1, exact=True)]
    assert sorted(len(c) for c in cohorts(jobs, lockstep=True)) == [5, 5]
    assert all(len(c) == 1 for c in cohorts(jobs, lockstep=False))
    class Epochs(RunProgress):
        def __init__(self) -> None:
            self.seen: list[tuple[int, int, int]] = []

        def epoch(self, event: EpochProgress) -> None:
            self.seen.append((event.epoch, event.epochs, event.configs))

    for name, flag in (("lock", True), ("sep", False)):
        progress = Epochs()
        summary = run_jobs(jobs, tmp_path / name, home=tiny, device="cpu", workers=0, lockstep=flag, progress=progress)
        assert len(summary.ran) == len(jobs) and not summary.failed
        # the epoch bar moves for a group as for one job: each group's epochs, its 5 jobs in each
        assert progress.seen == ([(1, 2, 5), (2, 2, 5)] * 2 if flag else [(1, 2, 1), (2, 2, 1)] * len(jobs))
    for j in jobs:
        a, b = (pq.read_table(tmp_path / name / "records" / f"{j.job_id}.parquet").to_pylist()[0]
                for name in ("lock", "sep"))
        assert (a["val_map"], a["test_map"], a["test_ap"]) == (b["val_map"], b["test_map"], b["test_ap"]), j.loss
