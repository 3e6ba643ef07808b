"""``prepare``'s staging folders ``<home>/.<ds>.partial-*``: owned, and cleaned once their run is dead.

A staging folder holds an ``OWNER_FILE`` (``pid host start``, :mod:`spmlbench.procinfo`) written
right after it was made. A later ``prepare`` of the same dataset removes folders whose owner is
gone from this host (killed, or the pid now belongs to another process), and owner-less folders
older than ``ORPHAN_AGE_S`` (made by an older version, or killed before the owner line was written).
Folders of a live run, or of another host, are left alone.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from spmlbench import procinfo

OWNER_FILE = ".spmlbench-owner"
ORPHAN_AGE_S = 3600.0


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
