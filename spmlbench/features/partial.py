"""Resumable extraction state: ``<ds>/features/.<backbone>.partial/``.

Rows are cut into fixed chunks ``[k * chunk_rows, (k + 1) * chunk_rows)``; each finished chunk is
one ``rows_<start>_<stop>.npy`` file written atomically, so whatever is on disk is complete.
``plan.json`` records what the chunks were computed with (backbone, weights, image size,
precision, image list hash, ...); a later run with a different plan discards the chunks instead
of mixing them. The final cache is assembled from the chunks only when all are present.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from spmlbench.atomic import atomic_path, atomic_write_text

PLAN_FILE = "plan.json"
_CHUNK_RE = re.compile(r"^rows_(\d+)_(\d+)\.npy$")


def images_sha256(images: list[str]) -> str:
    """Hash of an ordered image list (identifies the rows a partial extraction belongs to)."""
    h = hashlib.sha256()
    for name in images:
        h.update(name.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def chunk_ranges(n_rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """The fixed row ranges ``[start, stop)`` of an extraction of ``n_rows`` rows."""
    return [(s, min(s + chunk_rows, n_rows)) for s in range(0, n_rows, chunk_rows)]


class PartialExtraction:
    """The chunk files of one unfinished extraction, tied to its plan."""

    def __init__(self, folder: Path, plan: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self.plan = dict(plan)
        self.n_rows = int(plan["rows"])
        self.dim = int(plan["dim"])
        self.chunk_rows = int(plan["chunk_rows"])

    @classmethod
    def open(cls, folder: Path, plan: dict[str, Any]) -> tuple[PartialExtraction, bool]:
        """Open (or start) the partial folder for ``plan``; returns ``(state, discarded)``.

        ``discarded`` is True when chunks from a different plan were found and removed.
        """
        folder = Path(folder)
        discarded = False
        plan_path = folder / PLAN_FILE
        if folder.exists():
            try:
                old = json.loads(plan_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old != json.loads(json.dumps(plan)):
                discarded = any(_CHUNK_RE.match(p.name) for p in folder.iterdir())
                shutil.rmtree(folder)
        if not folder.exists():
            folder.mkdir(parents=True)
            atomic_write_text(plan_path, json.dumps(plan, sort_keys=True, indent=1))
        return cls(folder, plan), discarded

    def chunk_path(self, start: int, stop: int) -> Path:
        """File of the chunk holding rows ``[start, stop)``."""
        return self.folder / f"rows_{start:010d}_{stop:010d}.npy"

    def ranges(self) -> list[tuple[int, int]]:
        """Every chunk range of this extraction."""
        return chunk_ranges(self.n_rows, self.chunk_rows)

    def done(self) -> set[tuple[int, int]]:
        """Ranges whose chunk file is present with the expected shape (others are ignored)."""
        expected = set(self.ranges())
        found: set[tuple[int, int]] = set()
        for p in self.folder.iterdir():
            m = _CHUNK_RE.match(p.name)
            if not m:
                continue
            rng = (int(m.group(1)), int(m.group(2)))
            if rng in expected and self._valid(p, rng):
                found.add(rng)
        return found

    def _valid(self, path: Path, rng: tuple[int, int]) -> bool:
        """True when a chunk file reads as float32 of shape (stop - start, dim)."""
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False
        return arr.dtype == np.float32 and arr.shape == (rng[1] - rng[0], self.dim)

    def missing(self) -> list[tuple[int, int]]:
        """Ranges still to compute, in row order."""
        done = self.done()
        return [r for r in self.ranges() if r not in done]

    def write_chunk(self, start: int, stop: int, features: np.ndarray) -> Path:
        """Store the finished rows ``[start, stop)`` atomically."""
        arr = np.ascontiguousarray(features, dtype=np.float32)
        if arr.shape != (stop - start, self.dim):
            raise ValueError(f"chunk {start}:{stop} has shape {arr.shape}, expected {(stop - start, self.dim)}")
        path = self.chunk_path(start, stop)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        return path

    def assemble(self) -> np.ndarray:
        """The (N, D) float32 matrix from all chunks; raises RuntimeError if one is missing."""
        missing = self.missing()
        if missing:
            raise RuntimeError(f"{self.folder}: {len(missing)} chunks missing, first rows {missing[0]}")
        out = np.empty((self.n_rows, self.dim), dtype=np.float32)
        for start, stop in self.ranges():
            out[start:stop] = np.load(self.chunk_path(start, stop), allow_pickle=False)
        return out

    def remove(self) -> None:
        """Delete the partial folder (after the final cache is in place)."""
        shutil.rmtree(self.folder, ignore_errors=True)
