"""Atomic training checkpoints (``torch.save`` to a temp file, then rename).

A checkpoint is a plain dict (model / optimizer / loss state dicts, RNG state, per-epoch
metrics). It carries the fingerprint of the job that wrote it, so a work folder reused by another
job is detected instead of silently resumed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from spmlbench.atomic import atomic_path
from spmlbench.errors import ConfigError, DataError

FORMAT_VERSION = 1


def fingerprint(spec: Any) -> str:
    """A short stable hash of a JSON-able description of a run (job fields plus resolved recipe)."""
    text = json.dumps(spec, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (plus the format version) to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT_VERSION, **state}, tmp)
    return path


def load_checkpoint(
    path: str | os.PathLike[str], *, expect_fingerprint: str | None = None, map_location: Any = "cpu"
) -> dict[str, Any] | None:
    """Load a checkpoint, or None if ``path`` does not exist.

    Raises ConfigError when it belongs to another run (fingerprint mismatch) and DataError when it
    is unreadable or of another format version.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise DataError(f"{path}: unreadable checkpoint ({type(exc).__name__}); delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise DataError(f"{path}: checkpoint format is not {FORMAT_VERSION}; delete it to start over")
    if expect_fingerprint is not None and state.get("fingerprint") != expect_fingerprint:
        raise ConfigError(
            f"{path}: checkpoint was written by another job or recipe; use a fresh work folder or delete it"
        )
    return state


def rng_state() -> dict[str, Any]:
    """The global torch RNG state (CPU and, when present, every CUDA device)."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
