"""Locks that must not block a run: a reused pid, an empty old file, a hung owner; a live owner is waited
for with a message naming the lock, and taken over once it ends (end to end through the CLI)."""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from spmlbench import procinfo
from spmlbench.experiments import locks
from spmlbench.experiments.records import load_records, record_path
from test_linear_support import write_dataset

RUN = ("run", "--recipe", "paper", "--dataset", "voc", "--losses", "an,gr,role", "--seeds", "0", "--epochs", "1", "--device", "cpu",
       "--processes", "1")


def spmlbench_cmd(*args: str) -> list[str]:
    """The CLI as a user runs it, in a fresh interpreter."""
    return [sys.executable, "-m", "spmlbench", *args]


def cli_env(home: Path) -> dict[str, str]:
    return dict(os.environ, SPMLBENCH_HOME=str(home), COLUMNS="200")


@pytest.fixture
def sleeper() -> subprocess.Popen:
    """A live process that is not a spmlbench run."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield proc
    proc.kill()
    proc.wait()


def finished_run(cli, home: Path, out: Path) -> list[str]:
    """Run the three jobs on a tiny dataset once, then delete their records: their ids, to plant locks under."""
    write_dataset(home, n=60)
    res = cli(*RUN, "--out", str(out))
    assert res.code == 0, res.err
    ids = sorted(p.stem for p in (out / "records").glob("*.parquet"))
    assert len(ids) == 3
    for job_id in ids:
        record_path(out, job_id).unlink()
    return ids


def test_stale_rules_for_this_host(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    host = socket.gethostname()
    assert procinfo.start_token(sleeper.pid) != procinfo.NO_START
    path = locks.lock_path(tmp_path, "x")
    path.parent.mkdir(parents=True)

    def stale(text: str, age: float) -> bool:
        path.write_text(text)
        then = time.time() - age
        os.utime(path, (then, then))
        return locks.is_stale(text, locks._age(path))

    live = procinfo.owner_line(sleeper.pid)
    assert not stale(live, 5)  # the owner runs and refreshes its lock
    assert stale(live, locks.STALE_S + 60)  # the owner runs but stopped refreshing (hung): taken over
    assert stale(f"{sleeper.pid} {host} {procinfo.start_token(sleeper.pid)}0", 5)  # same pid, other start: reused
    assert stale(f"{sleeper.pid} {host}", 600)  # old two-field line, written before this process started
    assert 600 < locks.STALE_S
    assert not stale("", 5) and not stale("12", 5)  # may be being written
    assert stale("", 2 * 86400) and stale("garbage \x00", locks.WRITE_GRACE_S + 1)  # empty / foreign, days old
    assert not stale(f"{sleeper.pid} other-host.example 1:2", 5)  # another host's: judged by age only
    assert stale(f"{sleeper.pid} other-host.example 1:2", locks.STALE_S + 60)


def test_a_zombie_owner_is_gone(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    line = procinfo.owner_line(proc.pid)
    while procinfo.pid_alive(proc.pid):  # ends, and stays a zombie until reaped
        time.sleep(0.05)
    assert procinfo.owner_gone(line, time.time()) is True
    proc.wait()


def test_holder_names_the_lock_its_owner_and_the_fix(tmp_path: Path, sleeper: subprocess.Popen) -> None:
    path = locks.lock_path(tmp_path, "job1")
    path.parent.mkdir(parents=True)
    path.write_text(procinfo.owner_line(sleeper.pid))
    held = locks.holder(tmp_path, "job1")
    assert held is not None and held.path == path
    text = held.describe()
    assert str(path) in text and f"pid {sleeper.pid} on {socket.gethostname()}" in text
    assert "delete the file" in text and f"{locks.STALE_S:.0f} s" in text
    assert not locks.claim(tmp_path, "job1")
    sleeper.kill()
    sleeper.wait()
    assert locks.holder(tmp_path, "job1") is None and locks.claim(tmp_path, "job1")


def test_run_takes_over_reused_pid_and_empty_old_locks(cli, home: Path, tmp_path: Path,
                                                        sleeper: subprocess.Popen) -> None:
    out = tmp_path / "res"
    ids = finished_run(cli, home, out)
    host = socket.gethostname()
    plant = {
        ids[0]: f"{sleeper.pid} {host} {procinfo.start_token(sleeper.pid)}9",  # the pid now runs another process
        ids[1]: "",  # an empty lock file, two days old
        ids[2]: f"{sleeper.pid} {host}",  # an old-style line older than the live process with that pid
    }
    ages = {ids[0]: 0.0, ids[1]: 2 * 86400.0, ids[2]: 300.0}  # ids[2]: younger than STALE_S, older than the process
    for job_id, text in plant.items():
        locks.lock_path(out, job_id).write_text(text)
        then = time.time() - ages[job_id]
        os.utime(locks.lock_path(out, job_id), (then, then))
    res = subprocess.run(spmlbench_cmd(*RUN, "--out", str(out)), capture_output=True, text=True, timeout=600,
                         env=cli_env(home))
    assert res.returncode == 0, res.stderr
    assert "3 jobs run" in res.stdout and "waiting" not in res.stderr
    assert sorted(load_records(out)["job_id"]) == ids
    assert not list((out / "locks").iterdir())


def _lines(stream) -> queue.Queue:
    q: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in stream], daemon=True).start()
    return q


def test_run_waits_for_a_live_owner_says_which_lock_then_takes_over(cli, home: Path, tmp_path: Path,
                                                                     sleeper: subprocess.Popen) -> None:
    out = tmp_path / "res"
    ids = finished_run(cli, home, out)
    lock = locks.lock_path(out, ids[1])
    lock.write_text(procinfo.owner_line(sleeper.pid))  # a live owner on this host, refreshing (fresh mtime)
    proc = subprocess.Popen(spmlbench_cmd(*RUN, "--out", str(out)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env(home))
    try:
        err = _lines(proc.stderr)
        line = ""
        while "waiting:" not in line:
            line = err.get(timeout=300)
        assert str(lock) in line and f"pid {sleeper.pid} on {socket.gethostname()}" in line
        assert "delete the file" in line
        assert sorted(p.stem for p in (out / "records").glob("*.parquet")) == sorted(set(ids) - {ids[1]})
        sleeper.kill()  # the owner ends without releasing its lock
        sleeper.wait()
        stdout = proc.stdout.read()  # small: the summary and the table
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "3 jobs run" in stdout  # the waited-for job was taken over and run here
    assert sorted(load_records(out)["job_id"]) == ids and not list((out / "locks").iterdir())
