"""SIGTERM, Ctrl-C and kill -9 end to end: no orphaned workers, no pipe held open, locks released, the
resume hint printed (a CI job or scheduler that sends SIGTERM must not hang)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from spmlbench import procinfo
from spmlbench.cli import RESUME
from test_reliability_locks import cli_env, spmlbench_cmd

LONG = ("run", "--recipe", "paper", "--losses", "an,gr,role,epr", "--seeds", "0,1", "--epochs", "400", "--device", "cpu")


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid and procinfo.pid_alive(int(entry.name)):
                out.append(int(entry.name))
    return out


def is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def survivors(pids: list[int], patience: float = 30.0) -> list[int]:
    """``pids`` still alive after up to ``patience`` s (a process that closed its pipes may still be exiting)."""
    deadline = time.time() + patience
    while [p for p in pids if procinfo.pid_alive(p)] and time.time() < deadline:
        time.sleep(0.1)
    return [p for p in pids if procinfo.pid_alive(p)]


def start_run(home: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(spmlbench_cmd(*LONG, "--out", str(out), *extra), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=cli_env(home), start_new_session=True)


def wait_training(proc: subprocess.Popen, out: Path, workers: int) -> list[int]:
    """Block until the run holds its claims and has ``workers`` worker processes; their pids and all children."""
    while True:
        assert proc.poll() is None, proc.communicate()
        kids = children(proc.pid)
        found = [p for p in kids if is_worker(p)]
        if (out / "locks").is_dir() and list((out / "locks").iterdir()) and len(found) >= workers:
            time.sleep(2.0)  # let the workers get into their epochs
            return children(proc.pid)
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_stops_the_workers_releases_locks_and_exits_143(cli, home: Path, tmp_path: Path) -> None:
    assert cli("prepare", "digits").code == 0
    out = tmp_path / "res"
    proc = start_run(home, out, "--processes", "2")
    try:
        kids = wait_training(proc, out, workers=2)
        assert sum(is_worker(p) for p in kids) == 2
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)  # returns only once every holder of its pipes is gone
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err
    assert f"terminated; {RESUME}" in err and "Traceback" not in err
    assert not survivors(kids)  # workers and the resource tracker ended too
    assert not list((out / "locks").iterdir())  # the claims were released: a re-run starts at once
    assert all(p.suffix == ".parquet" and not p.name.startswith(".") for p in (out / "records").glob("*"))


@pytest.mark.slow
def test_ctrl_c_prints_the_resume_hint_and_exits_130(cli, home: Path, tmp_path: Path) -> None:
    assert cli("prepare", "digits").code == 0
    out = tmp_path / "res"
    proc = start_run(home, out, "--processes", "1")
    try:
        wait_training(proc, out, workers=0)
        proc.send_signal(signal.SIGINT)
        stdout, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert f"interrupted; {RESUME}" in err and "Traceback" not in err
    assert not list((out / "locks").iterdir())


@pytest.mark.slow
def test_workers_exit_when_their_caller_is_killed(cli, home: Path, tmp_path: Path) -> None:
    """kill -9 runs no cleanup: the workers notice their caller is gone and exit on their own."""
    assert cli("prepare", "digits").code == 0
    out = tmp_path / "res"
    proc = start_run(home, out, "--processes", "2")
    try:
        kids = wait_training(proc, out, workers=2)
        workers = [p for p in kids if is_worker(p)]
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)  # EOF on both pipes: the workers (which inherited them) exited
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -9
    assert len(workers) == 2 and not survivors(kids)
