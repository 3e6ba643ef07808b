"""mAP equals scikit-learn's average_precision_score (ties, empty classes, config axis)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from spmlbench.train.evaluate import average_precision, mean_ap


def sk_ap(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Independent oracle: scikit-learn per class, 0 for a class without positives."""
    out = []
    for c in range(scores.shape[1]):
        if labels[:, c].sum() == 0:
            out.append(0.0)
        else:
            out.append(average_precision_score(labels[:, c], scores[:, c]))
    return np.array(out)


def random_case(seed: int, n: int = 300, c: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.15).astype(np.int8)
    labels[:, 3] = 0  # empty class
    labels[:, 7] = 0
    labels[5, 7] = 1  # a class with a single positive
    logits = rng.normal(size=(n, c)) * 3 + labels * 2
    return logits, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_heavy_ties(seed: int) -> None:
    logits, labels = random_case(seed)
    cases = {
        "continuous": torch.sigmoid(torch.tensor(logits, dtype=torch.float32)),
        "rounded": torch.round(torch.sigmoid(torch.tensor(logits)) * 10) / 10,
        "quantised": torch.floor(torch.tensor(logits)).to(torch.float32),
        # saturated float32 sigmoid: many scores are exactly 1.0 or 0.0
        "saturated": torch.sigmoid(torch.tensor(logits * 12, dtype=torch.float32)),
        "constant": torch.zeros(logits.shape, dtype=torch.float32),
    }
    for name, scores in cases.items():
        expected = sk_ap(scores.numpy(), labels)
        got = average_precision(scores, torch.tensor(labels)).numpy()
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9, err_msg=name)
        assert got[3] == 0.0
        assert float(mean_ap(scores, torch.tensor(labels))) == pytest.approx(100 * expected.mean(), abs=1e-9)


def test_saturated_sigmoid_has_ties_that_change_ap() -> None:
    logits, labels = random_case(5)
    sat = torch.sigmoid(torch.tensor(logits * 12, dtype=torch.float32))
    assert (sat == 1.0).sum() > 50  # the fixture really has ties
    raw = sk_ap(logits * 12, labels)
    np.testing.assert_allclose(average_precision(sat, torch.tensor(labels)).numpy(), sk_ap(sat.numpy(), labels), atol=1e-9)
    assert not np.allclose(sk_ap(sat.numpy(), labels), raw)


def test_config_axis() -> None:
    rng = np.random.default_rng(3)
    n, c, m = 150, 6, 4
    labels = (rng.random((n, c)) < 0.2).astype(np.int8)
    labels[:, 0] = 0
    scores = np.round(rng.random((2, m, n, c)), 1).astype(np.float32)
    got = average_precision(torch.tensor(scores), torch.tensor(labels))
    assert got.shape == (2, m, c)
    for i in range(2):
        for j in range(m):
            np.testing.assert_allclose(got[i, j].numpy(), sk_ap(scores[i, j], labels), atol=1e-9)
    maps = mean_ap(torch.tensor(scores), torch.tensor(labels))
    assert maps.shape == (2, m)
    np.testing.assert_allclose(maps[1, 2].item(), 100 * sk_ap(scores[1, 2], labels).mean(), atol=1e-9)


def test_hand_derived_value() -> None:
    # scores 0.9(+) 0.8(-) 0.8(+) 0.1(-): thresholds 0.9 -> P=1,R=.5; 0.8 -> P=2/3,R=1 => AP=.5+.5*2/3
    scores = torch.tensor([[0.9], [0.8], [0.8], [0.1]])
    labels = torch.tensor([[1], [0], [1], [0]])
    assert average_precision(scores, labels).item() == pytest.approx(0.5 + 0.5 * 2 / 3, abs=1e-12)


def test_float32_key_sort_equals_the_float64_path_and_sklearn() -> None:
    """Float32 scores on the CPU are sorted as integer keys; their AP equals the float64 path (torch.sort;
    float32 -> float64 keeps every order and tie) and scikit-learn, with negative scores, infinities
    and signed zeros (-0.0 == +0.0 is one tie group)."""
    rng = np.random.default_rng(7)
    n, c = 400, 9
    labels = (rng.random((n, c)) < 0.3).astype(np.int8)
    values = np.array([-np.inf, -3.5, -1.0, -0.0, 0.0, 1e-30, 0.5, 2.0, np.inf], dtype=np.float32)
    scores = values[rng.integers(0, len(values), (n, c))]
    scores[:, 4] = rng.normal(size=n).astype(np.float32)  # one class without ties
    s32 = torch.tensor(scores)
    got = average_precision(s32, torch.tensor(labels))
    # equal up to the summation order of positives inside a tie group
    torch.testing.assert_close(got, average_precision(s32.double(), torch.tensor(labels)), rtol=0, atol=1e-14)
    finite = np.clip(scores.astype(np.float64), -1e300, 1e300)  # scikit-learn refuses inf; same order and ties
    np.testing.assert_allclose(got.numpy(), sk_ap(finite, labels), rtol=0, atol=1e-12)
    flipped = torch.tensor(np.where(scores == 0, np.float32(-0.0), scores))  # every zero now -0.0
    torch.testing.assert_close(average_precision(flipped, torch.tensor(labels)), got, rtol=0, atol=1e-14)
