"""Lockstep lanes (spmlbench.train.lockstep_lanes): who splits, how a group is balanced, a split group equals an
in-process group with the lanes' thread count bit for bit, and a kill -9 of a run mid-epoch leaves no lane
behind and resumes every job to the numbers of an uninterrupted run."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from spmlbench.train.configs import EpochProgress
from spmlbench.train.lockstep import train_lockstep
from spmlbench.train.lockstep_lanes import lane_count, split_lanes
from test_e2e import Job, _write_tiny, recipe, tiny  # noqa: F401 - fixtures
from test_reliability_signals import children, is_worker, survivors

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_lane_count_rules() -> None:
    assert lane_count(8, CUDA, False, 4) == 1  # the GPU runs one process
    assert lane_count(8, CPU, True, 4) == 1  # --exact: the separate runs' thread count
    assert lane_count(1, CPU, False, 4) == 1
    assert lane_count(8, CPU, False, None) == 1  # only when asked: a lane's thread count rounds differently
    assert lane_count(8, CPU, False, 3) == 3
    assert lane_count(2, CPU, False, 5) == 2  # no more lanes than jobs


def test_split_lanes_balances_by_epochs() -> None:
    assert split_lanes([10, 10, 5, 5, 3], 2) == [[0, 2, 4], [1, 3]]  # 18 and 15 epochs
    assert split_lanes([4, 4, 4, 4, 4], 2) == [[0, 2, 4], [1, 3]]
    assert split_lanes([1, 2], 5) == [[1], [0]]  # never an empty lane
    assert sorted(i for p in split_lanes([3, 1, 4, 1, 5, 9, 2, 6], 3) for i in p) == list(range(8))


def _jobs(epochs: int = 2) -> list:
    return [Job(loss=loss, backbone="resnet18:none", epochs=epochs, seed=0, lr=1e-3) for loss in ("an", "gr", "em")]


@pytest.mark.slow
def test_lanes_equal_an_in_process_group_with_their_threads(tiny: Path, tmp_path: Path) -> None:
    """Two lanes (spawned: the backbone is a registered one) give each job the numbers of the in-process group run
    with the lanes' intra-op threads, bit for bit; a lane that raises a user error stops the call with it."""
    jobs = _jobs()
    recipes = [recipe(j) for j in jobs]

    events: dict[str, list[EpochProgress]] = {"lanes": [], "one": []}

    def run(root: str, processes: int) -> list:
        return train_lockstep(jobs, recipes, [tmp_path / root / str(i) for i in range(len(jobs))], home=tiny,
                              device="cpu", workers=0, image_size=32, processes=processes,
                              on_epoch=events[root].append)

    threads = torch.get_num_threads()
    lanes = run("lanes", 2)
    torch.set_num_threads(max(1, threads // 2))
    try:
        alone = run("one", 1)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(lanes, alone):
        assert a.status == b.status == "ok", (a.error, b.error)
        assert (a.val_map, a.train_loss, a.test_map, a.test_ap) == (b.val_map, b.train_loss, b.test_map, b.test_ap)
    assert {a.device for a in lanes} == {"cpu"} and len(lanes) == len(jobs)
    assert {a.settings["threads"] for a in lanes} == {max(1, threads // 2)}  # the record names the lane's threads
    # the group's epochs as the CLI's epoch bar sees them: 3 jobs, the best val mAP of any of them so far
    best = [max(r.val_map[e] for r in alone for e in range(k + 1)) for k in range(2)]
    assert events["one"] == [EpochProgress(1, 2, 3, best[0]), EpochProgress(2, 2, 3, best[1])]
    assert events["lanes"][-1] == EpochProgress(2, 2, 3, best[1])  # reported once both lanes reach an epoch
    assert [e.epoch for e in events["lanes"]] == sorted(e.epoch for e in events["lanes"])
    broken = [dataclasses.replace(j, dataset="nosuch") for j in jobs]
    with pytest.raises(Exception, match="nosuch"):
        train_lockstep(broken, recipes, [tmp_path / "x" / str(i) for i in range(3)], home=tiny, device="cpu",
                       workers=0, image_size=32, processes=2)


RUN_SCRIPT = textwrap.dedent("""
    import dataclasses, sys
    sys.path.insert(0, {tests!r})
    from spmlbench.experiments.runner import run_jobs
    from test_e2e import Job

    if __name__ == "__main__":  # the lanes are spawned: they import this file again
        jobs = [dataclasses.replace(Job(loss=loss, epochs=6), image_size=32) for loss in ("an", "gr", "em")]
        summary = run_jobs(jobs, sys.argv[1], home={home!r}, device="cpu", workers=0, lockstep=True, processes=2)
        sys.exit(1 if summary.failed else 0)
""")


def _records(out: Path) -> dict[str, tuple]:
    rows = [pq.read_table(p).to_pylist()[0] for p in sorted((out / "records").glob("*.parquet"))]
    return {r["loss"]: (r["val_map"], r["train_loss"], r["test_map"], r["test_ap"], r["status"]) for r in rows}


@pytest.mark.slow
def test_a_killed_lane_run_resumes_every_job_to_the_uninterrupted_numbers(home: Path, tmp_path: Path) -> None:
    """kill -9 of a run whose lockstep group trains in two lanes, mid-epoch: the lanes exit on their own, and the
    re-run resumes every job from its own last epoch to the records of a run never killed, bit for bit."""
    _write_tiny(home, n_train=64, n_val=16, n_test=16)
    script = tmp_path / "run.py"
    script.write_text(RUN_SCRIPT.format(tests=str(Path(__file__).parent), home=str(home)))
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while len(list((killed / "work").glob("*/last.pt"))) < 3:  # every job has a checkpoint: in epoch 2 or later
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        kids = children(proc.pid)
        lanes = [p for p in kids if is_worker(p)]
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -9
    assert not list((killed / "records").glob("*.parquet"))  # killed mid-training: no job had its record
    assert len(lanes) == 2 and not survivors(kids)  # the lanes noticed their caller was gone and exited
    for out in (killed, whole):
        res = subprocess.run([sys.executable, str(script), str(out)], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr
    got, want = _records(killed), _records(whole)
    assert sorted(want) == ["an", "em", "gr"] and {v[-1] for v in want.values()} == {"ok"}
    assert all(len(v[0]) == 6 for v in want.values())
    for loss in want:
        assert got[loss] == want[loss], loss
