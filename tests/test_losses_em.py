"""EM and EM-APL (Zhou et al. 2022): values, per-class pseudo-label counts and accumulation, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spmlbench.losses import build_loss, resolve_hparams

EPS = 1e-5


def sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def nl(x: np.ndarray) -> np.ndarray:
    return -np.log(x + EPS)


def test_em_single_entry_by_hand() -> None:
    # unobserved, z = 0, alpha = 0.2 (VOC): -0.2 * H(0.5) = -0.2 * 2 * 0.5 * -log(0.50001) = -0.13862544
    loss = build_loss("em", num_classes=1, dataset="voc")
    assert float(loss(torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, 1))) == pytest.approx(-0.1386254361, abs=1e-9)


def test_em_matrix() -> None:
    z = np.array([[2.0, -1.0, 0.5], [-0.3, 1.5, -4.0]])
    s = np.array([[1, 0, 0], [0, 0, 1]])
    p = sig(z)
    for alpha, kw in ((0.01, {"dataset": "cub"}), (0.1, {"dataset": "coco"}), (0.5, {"alpha": 0.5})):
        want = np.where(s == 1, nl(p), -alpha * (p * nl(p) + (1 - p) * nl(1 - p))).mean()
        got = float(build_loss("em", num_classes=3, **kw)(torch.tensor(z), torch.tensor(s)))
        assert got == pytest.approx(want, rel=1e-10)


def test_em_apl_dataset_table() -> None:
    rows = {"voc": (0.2, 0.02, 5), "coco": (0.1, 0.9, 5), "nuswide": (0.1, 0.2, 4), "cub": (0.01, 0.4, 3)}
    for ds, (alpha, beta, tw) in rows.items():
        hp = resolve_hparams("em_apl", ds)
        assert (hp.alpha, hp.beta, hp.warmup_epoch, hp.theta) == (alpha, beta, tw, 0.9)


# 6 training images, 2 classes. Class 0 observed in image 0 (U_0 = 5); class 1 in images 1, 2 (U_1 = 4).
OBS = torch.tensor([[1, 0], [0, 1], [0, 1], [0, 0], [0, 0], [0, 0]])
# T = 7, T_w = 5, theta = 0.9: per epoch int(0.9 * 5 / 2) = 2 for class 0, int(0.9 * 4 / 2) = 1 for class 1
LOGITS_E5 = torch.tensor([[5.0, -1.0], [-3.0, 2.0], [0.5, 2.0], [-2.0, -0.5], [1.0, -2.5], [-1.0, 0.2]])
LOGITS_E6 = torch.tensor([[5.0, -1.0], [-3.5, 2.0], [-4.0, 2.0], [-2.2, -0.9], [0.7, -2.0], [-1.3, -3.0]])


def _apl():
    loss = build_loss("em_apl", num_classes=2, num_train=6, alpha=0.1, beta=0.5, theta=0.9, warmup_epoch=5)
    loss.init_state(OBS)
    return loss


def test_em_apl_counts_and_accumulation() -> None:
    loss = _apl()
    calls = []

    def predict(logits: torch.Tensor):
        def fn() -> torch.Tensor:
            calls.append(1)
            return logits
        return fn

    for e in range(1, 5):  # before T_w: no inference pass at all
        loss.start_epoch(e, 7)
        loss.end_epoch(predict(LOGITS_E5))
    assert calls == [] and not loss.batched.pseudo.any()

    loss.start_epoch(5, 7)
    assert loss.batched.counts(5, 0.9) == [2, 1]
    loss.end_epoch(predict(LOGITS_E5))
    pseudo, target = loss.batched.pseudo[0], loss.batched.target[0]
    # class 0, unobserved rows 1..5 with z -3, 0.5, -2, 1, -1 -> lowest two: rows 1, 3
    # class 1, unobserved rows 0, 3, 4, 5 with z -1, -0.5, -2.5, 0.2 -> lowest: row 4
    assert pseudo.nonzero().tolist() == [[1, 0], [3, 0], [4, 1]]
    assert target[1, 0].item() == pytest.approx(float(sig(np.array(-3.0))), rel=1e-6)
    assert target[3, 0].item() == pytest.approx(float(sig(np.array(-2.0))), rel=1e-6)
    assert target[4, 1].item() == pytest.approx(float(sig(np.array(-2.5))), rel=1e-6)

    loss.start_epoch(6, 7)
    loss.end_epoch(predict(LOGITS_E6))
    # class 0 left: rows 2 (-4), 4 (0.7), 5 (-1.3) -> rows 2, 5; class 1 left: rows 0 (-1), 3 (-0.9), 5 (-3) -> row 5
    assert pseudo.nonzero().tolist() == [[1, 0], [2, 0], [3, 0], [4, 1], [5, 0], [5, 1]]
    # earlier targets keep their value from the epoch they were assigned
    assert target[1, 0].item() == pytest.approx(float(sig(np.array(-3.0))), rel=1e-6)
    assert target[2, 0].item() == pytest.approx(float(sig(np.array(-4.0))), rel=1e-6)
    assert target[5, 1].item() == pytest.approx(float(sig(np.array(-3.0))), rel=1e-6)

    loss.start_epoch(7, 7)  # last epoch: class 0 has one entry left (take min(2, 1)), class 1 takes 1 more
    loss.end_epoch(predict(LOGITS_E6))
    assert int(pseudo[:, 0].sum()) == 5 and int(pseudo[:, 1].sum()) == 3
    assert len(calls) == 3


def test_em_apl_loss_on_soft_negatives() -> None:
    loss = _apl()
    loss.start_epoch(5, 7)
    loss.end_epoch(lambda: LOGITS_E5)
    z = np.array([[0.3, -0.2], [1.0, 2.0], [-0.5, 0.4]])
    index = torch.tensor([1, 4, 0])
    s = OBS[index].numpy()
    t = np.zeros_like(z)
    t[0, 0] = sig(-3.0)  # image 1, class 0
    t[1, 1] = sig(-2.5)  # image 4, class 1
    pseudo = t > 0
    p = sig(z)
    em = -0.1 * (p * nl(p) + (1 - p) * nl(1 - p))
    soft = 0.5 * (t * nl(p) + (1 - t) * nl(1 - p))
    want = np.where(s == 1, nl(p), np.where(pseudo, soft, em)).mean()
    zt = torch.tensor(z, requires_grad=True)
    got = loss(zt, torch.tensor(s), index)
    assert float(got.detach()) == pytest.approx(want, rel=1e-6)
    got.backward()
    assert not loss.batched.target.requires_grad and torch.isfinite(zt.grad).all()


def test_em_apl_without_warmup_pass_or_with_short_run_does_nothing() -> None:
    loss = _apl()
    loss.start_epoch(5, 5)  # T - T_w = 0: no pseudo-labels, predictions not requested
    loss.end_epoch(lambda: (_ for _ in ()).throw(AssertionError("must not be called")))
    assert not loss.batched.pseudo.any()
