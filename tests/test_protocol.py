"""Single-positive sampling and the train/val split against docs/protocol.md sections 3-4."""

from __future__ import annotations

import numpy as np
import pytest

from spmlbench.data.protocol import apply_protocol, sample_single_positive, split_indices

# A small fixed matrix; row 1 and the all-ones row 3 exercise the empty and full cases.
SMALL = np.array(
    [
        [1, 0, 1, 1, 0],
        [0, 0, 0, 0, 0],
        [0, 1, 0, 0, 1],
        [1, 1, 1, 1, 1],
        [0, 0, 1, 0, 0],
        [1, 0, 0, 1, 0],
    ]
)


def reference_sample(y: np.ndarray, seed: int = 1200) -> np.ndarray:
    """Section 4 written out with Python lists: shuffle positives, keep the first, shuffle negatives."""
    rng = np.random.RandomState(seed)
    out = np.zeros(y.shape, dtype=int)
    for i in range(y.shape[0]):
        pos = [j for j in range(y.shape[1]) if y[i, j] == 1]
        rng.shuffle(pos)
        if pos:
            out[i, pos[0]] = 1
        neg = [j for j in range(y.shape[1]) if y[i, j] == 0]
        rng.shuffle(neg)
    return out


def reference_split(n: int, frac: float = 0.2, seed: int = 1200) -> tuple[list[int], list[int]]:
    """Section 3 verbatim."""
    n_2 = int(round(frac * n))
    n_1 = n - n_2
    perm = np.random.RandomState(seed).permutation(n)
    return sorted(perm[:n_1].tolist()), sorted(perm[-n_2:].tolist())


def test_known_positions_for_a_fixed_matrix() -> None:
    # Observed by following section 4 by hand with RandomState(1200):
    # row 0: positives [0 2 3] shuffle -> [0 3 2] -> 0; negatives [1 4] -> [4 1]
    # row 1: no positive; negatives [0..4] -> [4 0 3 1 2]
    # row 2: positives [1 4] -> [1 4] -> 1;    negatives [0 2 3] -> [2 0 3]
    # row 3: positives [0..4] -> [0 1 4 2 3] -> 0
    # row 4: positives [2] -> 2;               negatives [0 1 3 4] -> [0 4 1 3]
    # row 5: positives [0 3] -> [0 3] -> 0
    observed = sample_single_positive(SMALL)
    assert [np.flatnonzero(r).tolist() for r in observed] == [[0], [], [1], [0], [2], [0]]
    assert observed.dtype == np.int8


def test_negative_shuffle_consumes_draws() -> None:
    # Skipping the negative shuffle gives row 2 -> 4 and row 3 -> 4 instead: the test above would fail.
    rng = np.random.RandomState(1200)
    skipped = []
    for row in SMALL:
        pos = np.flatnonzero(row == 1)
        rng.shuffle(pos)
        skipped.append(pos[:1].tolist())
    assert skipped == [[0], [], [4], [4], [2], [0]]
    assert skipped != [np.flatnonzero(r).tolist() for r in sample_single_positive(SMALL)]


def test_known_split_positions() -> None:
    # RandomState(1200).permutation(10) = [9 4 6 1 8 5 2 0 7 3]; n_2 = 2
    train, val = split_indices(10)
    assert train.tolist() == [0, 1, 2, 4, 5, 6, 8, 9]
    assert val.tolist() == [3, 7]
    # permutation(6) = [4 2 0 5 1 3]; n_2 = int(round(1.2)) = 1
    train, val = split_indices(6)
    assert train.tolist() == [0, 1, 2, 4, 5] and val.tolist() == [3]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_sampling_matches_reference_on_random_matrices(seed: int) -> None:
    rng = np.random.RandomState(seed)
    y = (rng.rand(300, 17) < rng.choice([0.05, 0.2, 0.6], size=(300, 1))).astype(np.int8)
    y[rng.rand(300) < 0.15] = 0  # rows without positives
    assert (y.sum(1) == 0).sum() > 10
    for label_seed in (1200, 5):
        ours = sample_single_positive(y, label_seed)
        ref = reference_sample(y, label_seed)
        np.testing.assert_array_equal(ours, ref)
    obs = sample_single_positive(y)
    assert ((obs.sum(1) == 1) == (y.sum(1) > 0)).all()  # one positive exactly where there is one
    assert (obs <= y).all()
    assert not np.array_equal(sample_single_positive(y, 1200), sample_single_positive(y, 5))


@pytest.mark.parametrize("n", [7, 11, 53, 101, 999, 5717])
def test_split_matches_reference(n: int) -> None:
    train, val = split_indices(n)
    ref_train, ref_val = reference_split(n)
    assert train.tolist() == ref_train and val.tolist() == ref_val
    assert len(val) == int(round(0.2 * n))


def test_voc_sizes() -> None:
    train, val = split_indices(5717)
    assert (len(train), len(val)) == (4574, 1143)


def test_apply_protocol_samples_before_the_split() -> None:
    rng = np.random.RandomState(3)
    y_train = (rng.rand(40, 6) < 0.3).astype(np.int8)
    y_test = (rng.rand(9, 6) < 0.3).astype(np.int8)
    res = apply_protocol(y_train, y_test)
    # sampled on the full train file (not per split), then split; rows keep file order
    np.testing.assert_array_equal(res.train_observed, reference_sample(y_train))
    ref_train, ref_val = reference_split(40)
    assert [i for i, s in enumerate(res.train_splits) if s == "val"] == ref_val
    assert [i for i, s in enumerate(res.train_splits) if s == "train"] == ref_train
    np.testing.assert_array_equal(res.test_observed, y_test)
    other = apply_protocol(y_train, y_test, label_seed=11)
    np.testing.assert_array_equal(other.train_observed, reference_sample(y_train, 11))
    assert other.train_splits == res.train_splits  # the label seed never changes the split
