"""Job claims: ``<out>/locks/<job_id>.lock`` created with O_EXCL, holding ``pid host start``.

Two processes never hold the same claim. ``start`` is the owner's process start time
(:mod:`spmlbench.procinfo`), so a pid reused by another process (after a kill -9 or a container
restart) does not keep a claim alive. While a run trains a job it refreshes the lock's mtime every
``HEARTBEAT_S`` (:func:`heartbeat`). A lock is stale, and is taken over, when its process is gone
from this host or the pid now belongs to a process started at another time; when it has not been
refreshed for ``STALE_S`` (its owner hangs, or the host died or lost the shared results folder);
or when it holds no readable owner line ``WRITE_GRACE_S`` after it was created (an empty or
foreign file). This process's own claims are never stale to itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from spmlbench import procinfo

LOCKS_DIR = "locks"
HEARTBEAT_S = 60.0  # how often a running job's lock is refreshed
STALE_S = 900.0  # a lock not refreshed for this long is abandoned (tolerates clock skew between hosts)
WRITE_GRACE_S = 30.0  # an unreadable lock younger than this may be being written


def lock_path(out_dir: str | os.PathLike[str], job_id: str) -> Path:
    """``<out>/locks/<job_id>.lock``."""
    return Path(out_dir) / LOCKS_DIR / f"{job_id}.lock"


def _owner() -> str:
    return procinfo.owner_line()


def is_stale(content: str, age_s: float | None = None, stale_s: float = STALE_S) -> bool:
    """Whether a lock (an owner line, refreshed ``age_s`` seconds ago) is abandoned; see the module doc."""
    if content.split() == _owner().split():
        return False
    if procinfo.parse_owner(content) is None:
        return age_s is not None and age_s > WRITE_GRACE_S
    if age_s is not None and age_s > stale_s:
        return True
    written = None if age_s is None else time.time() - age_s
    return bool(procinfo.owner_gone(content, written))


@dataclasses.dataclass(frozen=True)
class Holder:
    """A lock held by another live process: its file, owner line and age (for the waiting message)."""

    path: Path
    owner: str
    age_s: float | None

    def describe(self) -> str:
        """One line: which lock, whose, and how to clear it."""
        return (f"{self.path} is held by {procinfo.describe(self.owner, self.age_s)}; it is taken over once that "
                f"process ends or stops refreshing it for {STALE_S:.0f} s; if no spmlbench run owns it, delete the file")


def holder(out_dir: str | os.PathLike[str], job_id: str) -> Holder | None:
    """The live claim of another process on ``job_id`` (None when free, stale or this process's)."""
    path = lock_path(out_dir, job_id)
    content = _read(path)
    if content is None or content.split() == _owner().split():
        return None
    age = _age(path)
    return None if is_stale(content, age) else Holder(path, content, age)


def _age(path: Path) -> float | None:
    return procinfo.file_age(path)


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
        return path.read_text(errors="replace")
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
    return holder(out_dir, job_id) is not None


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
