"""Job claims: ``<out>/locks/<job_id>.lock`` created with O_EXCL, holding ``pid host``.

Two processes never hold the same claim. While a run trains a job it refreshes the lock's mtime
every ``HEARTBEAT_S`` (:func:`heartbeat`). A lock is stale, and is taken over, when its process is
gone from this host (a killed run), or when it comes from another host and has not been refreshed
for ``STALE_S`` (that host died or lost the shared results folder: the job is not blocked forever).
A live process on this host is always respected.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

LOCKS_DIR = "locks"
HEARTBEAT_S = 60.0  # how often a running job's lock is refreshed
STALE_S = 900.0  # another host's lock not refreshed for this long is abandoned (tolerates clock skew)


def lock_path(out_dir: str | os.PathLike[str], job_id: str) -> Path:
    """``<out>/locks/<job_id>.lock``."""
    return Path(out_dir) / LOCKS_DIR / f"{job_id}.lock"


def _owner() -> str:
    return f"{os.getpid()} {socket.gethostname()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale(content: str, age_s: float | None = None, stale_s: float = STALE_S) -> bool:
    """Whether a lock (``pid host``, refreshed ``age_s`` seconds ago) is abandoned: its process is
    gone from this host, or it is another host's and older than ``stale_s``."""
    parts = content.split()
    if len(parts) != 2 or not parts[0].isdigit():
        return False  # being written, or foreign: not ours to judge
    pid, host = int(parts[0]), parts[1]
    if host == socket.gethostname():
        return pid != os.getpid() and not _pid_alive(pid)
    return age_s is not None and age_s > stale_s


def _age(path: Path) -> float | None:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None


def _create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(_owner())
    return True


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def claim(out_dir: str | os.PathLike[str], job_id: str) -> bool:
    """Try to claim ``job_id``; True if this process now holds it (stale locks are taken over)."""
    path = lock_path(out_dir, job_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _create(path):
        return True
    content = _read(path)
    if content is None:
        return _create(path)
    if not is_stale(content, _age(path)):
        return False
    # move the stale lock aside atomically; only one contender can move this file
    aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    moved = _read(aside)
    if moved != content:  # we moved a fresh lock someone just created: put it back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return _create(path)


def release(out_dir: str | os.PathLike[str], job_id: str) -> None:
    """Drop this process's claim on ``job_id`` (a lock held by another process is left alone)."""
    path = lock_path(out_dir, job_id)
    if _read(path) == _owner():
        path.unlink(missing_ok=True)


def held_by_other(out_dir: str | os.PathLike[str], job_id: str) -> bool:
    """Whether a live claim by another process exists for ``job_id``."""
    path = lock_path(out_dir, job_id)
    content = _read(path)
    return content is not None and content != _owner() and not is_stale(content, _age(path))


def touch(out_dir: str | os.PathLike[str], job_id: str) -> None:
    """Refresh this process's claim on ``job_id`` (its mtime); another process's lock is left alone."""
    path = lock_path(out_dir, job_id)
    if _read(path) == _owner():
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)


@contextlib.contextmanager
def heartbeat(out_dir: str | os.PathLike[str], job_ids: Sequence[str], every: float = HEARTBEAT_S) -> Iterator[None]:
    """Refresh the claims on ``job_ids`` every ``every`` seconds (a daemon thread) while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every):
            for job_id in job_ids:
                touch(out_dir, job_id)

    thread = threading.Thread(target=beat, name="spmlbench-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
