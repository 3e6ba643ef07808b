"""Job claims: ``<out>/locks/<job_id>.lock`` created with O_EXCL, holding ``pid host``.

Two processes never hold the same claim. A lock left by a dead process on this host (a killed
run) is stale and is taken over; a lock from another host is respected.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

LOCKS_DIR = "locks"


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


def is_stale(content: str) -> bool:
    """Whether a lock's ``pid host`` names a process on this host that no longer runs."""
    parts = content.split()
    if len(parts) != 2 or not parts[0].isdigit():
        return False  # being written, or foreign: not ours to judge
    pid, host = int(parts[0]), parts[1]
    return host == socket.gethostname() and pid != os.getpid() and not _pid_alive(pid)


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
    if not is_stale(content):
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
    content = _read(lock_path(out_dir, job_id))
    return content is not None and content != _owner() and not is_stale(content)
