"""``prepare``'s staging folders ``<home>/.<ds>.partial-*``: owned, and cleaned once their run is dead.

A staging folder holds an ``OWNER_FILE`` (``pid host start``, :mod:`spmlbench.procinfo`) written
right after it was made. A later ``prepare`` of the same dataset removes folders whose owner is
gone from this host (killed, or the pid now belongs to another process), and owner-less folders
older than ``ORPHAN_AGE_S`` (made by an older version, or killed before the owner line was written).
Folders of a live run, or of another host, are left alone.

Two ``prepare`` runs of one dataset take turns (:func:`prepare_lock`, ``<home>/.<ds>.prepare.lock``): the
second waits for the first, saying so, instead of failing on its staging files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from spmlbench import procinfo

OWNER_FILE = ".spmlbench-owner"
ORPHAN_AGE_S = 3600.0
LOCK_GRACE_S = 30.0  # a lock file without a readable owner line younger than this may be being written


def make_staging(home_dir: Path, dataset: str) -> Path:
    """A new staging folder ``<home>/.<dataset>.partial-XXXX`` that names this process as its owner."""
    staging = Path(tempfile.mkdtemp(prefix=f".{dataset}.partial-", dir=home_dir))
    (staging / OWNER_FILE).write_text(procinfo.owner_line(), encoding="utf-8")
    return staging


def disown(staging: Path) -> None:
    """Drop the owner line before the folder is installed as the dataset."""
    (staging / OWNER_FILE).unlink(missing_ok=True)


def clean_stale(home_dir: Path, dataset: str, say: Callable[[str], None] = lambda msg: None) -> list[Path]:
    """Remove the staging folders of ``dataset`` left by dead runs; return the removed paths."""
    removed = []
    for folder in sorted(home_dir.glob(f".{dataset}.partial-*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        owner = folder / OWNER_FILE
        try:
            text: str | None = owner.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = None
        if text is not None:
            dead = procinfo.owner_gone(text, written_at=owner.stat().st_mtime) is True
        else:
            age = procinfo.file_age(folder)
            dead = age is not None and age > ORPHAN_AGE_S
        if dead:
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
                say(f"{folder}: removed the staging folder of an earlier prepare that did not finish")
    return removed


@contextlib.contextmanager
def prepare_lock(home_dir: Path, dataset: str, say: Callable[[str], None] = lambda msg: None,
                 wait_s: float = 0.5) -> Iterator[Path]:
    """Hold ``<home>/.<dataset>.prepare.lock`` (O_EXCL, ``pid host start``) while preparing ``dataset``; wait
    while another live process holds it (said once), take it over when its owner is gone."""
    home_dir.mkdir(parents=True, exist_ok=True)
    path = home_dir / f".{dataset}.prepare.lock"
    told = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _lock_gone(path):
                path.unlink(missing_ok=True)
                continue
            if not told:
                say(f"waiting: {path} is held by another prepare of {dataset}; this one continues when it ends "
                    "(delete the file if no prepare runs)")
                told = True
            time.sleep(wait_s)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(procinfo.owner_line())
        break
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _lock_gone(path: Path) -> bool:
    """Whether the prepare lock ``path`` is left by a process that is gone (or unreadable for long)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        written = path.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: try again
    if procinfo.parse_owner(text) is None:
        age = procinfo.file_age(path)
        return age is not None and age > LOCK_GRACE_S
    return procinfo.owner_gone(text, written_at=written) is True
