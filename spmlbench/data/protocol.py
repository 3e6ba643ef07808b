"""The community SPML protocol (docs/protocol.md, sections 3-4): single-positive sampling and the val split.

Both steps are bit-exact to the reference: numpy's legacy ``RandomState`` with seed 1200, a fresh
generator per formatted file for the sampling (the negative shuffle consumes draws too), and one
permutation of the official train rows for the split.
"""

from __future__ import annotations

import dataclasses

import numpy as np

PROTOCOL_SEED = 1200
"""Seed of both the label sampling and the split in the reference protocol."""

VAL_FRAC = 0.2
"""Fraction of the official train rows carved out as validation."""


def sample_single_positive(labels: np.ndarray, seed: int = PROTOCOL_SEED) -> np.ndarray:
    """Return the observed matrix: one positive per row drawn with a fresh ``RandomState(seed)``.

    For each row in order: shuffle the positive indices and keep the first, then shuffle the
    negative indices and keep nothing (the shuffle still consumes draws). Rows without a
    positive stay all zero. ``labels`` is an (N, C) 0/1 matrix; the result is (N, C) int8.
    """
    y = np.asarray(labels)
    if y.ndim != 2:
        raise ValueError(f"labels must be a 2-D matrix, got shape {y.shape}")
    rng = np.random.RandomState(seed)
    observed = np.zeros(y.shape, dtype=np.int8)
    for i in range(y.shape[0]):
        row = y[i]
        pos = np.nonzero(row == 1)[0]
        rng.shuffle(pos)
        observed[i, pos[:1]] = 1
        neg = np.nonzero(row == 0)[0]
        rng.shuffle(neg)
    return observed


def split_indices(
    n: int, val_frac: float = VAL_FRAC, seed: int = PROTOCOL_SEED
) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted (train, val) row indices of ``n`` official-train rows.

    ``n_2 = int(round(val_frac * n))``, ``perm = RandomState(seed).permutation(n)``,
    train = sorted(perm[:n - n_2]), val = sorted(perm[-n_2:]). (For ``n_2 == 0`` val is empty;
    the reference's ``perm[-0:]`` would select every row there, which never happens at real sizes.)
    """
    n_2 = int(round(val_frac * n))
    n_1 = n - n_2
    perm = np.random.RandomState(seed).permutation(n)
    return np.sort(perm[:n_1]), np.sort(perm[n_1:])


@dataclasses.dataclass(frozen=True)
class ProtocolResult:
    """Official-train rows with their split names and observed labels, and the test observed labels."""

    train_splits: list[str]
    train_observed: np.ndarray
    test_observed: np.ndarray


def apply_protocol(
    y_train: np.ndarray,
    y_test: np.ndarray,
    *,
    label_seed: int = PROTOCOL_SEED,
    val_frac: float = VAL_FRAC,
    split_seed: int = PROTOCOL_SEED,
) -> ProtocolResult:
    """Sample single positives on the full official train file, then split it into train/val.

    Rows keep the formatted file order; ``train_splits[i]`` is ``"train"`` or ``"val"``. Test rows
    are scored with clean labels, so their observed matrix is the clean matrix (the reference draws
    test positives with its own fresh generator, which no result uses).
    """
    observed = sample_single_positive(y_train, label_seed)
    _, val_idx = split_indices(len(y_train), val_frac, split_seed)
    splits = np.full(len(y_train), "train", dtype=object)
    splits[val_idx] = "val"
    return ProtocolResult(
        train_splits=[str(s) for s in splits],
        train_observed=observed,
        test_observed=np.asarray(y_test, dtype=np.int8).copy(),
    )
