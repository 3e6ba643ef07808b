"""Horizontal-flip draws shared by the image pipeline and the pseudo-label losses: a counter-based hash
of ``(seed, epoch, row[, view])``, independent of batch composition, worker count and loss, so matched
seeds see identical augmentation draws and a loss can look up the flip its image got."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on a uint64 array (numpy's uint64 arithmetic wraps modulo 2**64)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def flip_mask(seed: int, epoch: int, rows: Sequence[int] | np.ndarray) -> np.ndarray:
    """Horizontal-flip decisions (bool array, P = 0.5 each) for ``rows`` in ``epoch`` under ``seed``."""
    rows = np.asarray(rows, dtype=np.uint64)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.full(rows.shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
        key = _splitmix64(key ^ np.uint64(epoch & 0xFFFFFFFF))
        bits = _splitmix64(key ^ rows)
    return (bits >> np.uint64(63)).astype(bool)


def view_flips(seed: int, epoch: int, rows: Sequence[int] | np.ndarray, views: int) -> np.ndarray:
    """``(len(rows), views)`` flip decisions, one per view of each row (DAMP flips each view on its own);
    view 0 is :func:`flip_mask` itself, so a single-view method sees the flip of the training image."""
    rows = np.asarray(rows, dtype=np.uint64)
    out = np.empty((rows.shape[0], views), dtype=bool)
    out[:, 0] = flip_mask(seed, epoch, rows)
    with np.errstate(over="ignore"):
        key = _splitmix64(np.full(rows.shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF)))
        key = _splitmix64(key ^ np.uint64(epoch & 0xFFFFFFFF))
        for v in range(1, views):
            bits = _splitmix64(_splitmix64(key ^ np.uint64(v)) ^ rows)
            out[:, v] = (bits >> np.uint64(63)).astype(bool)
    return out
