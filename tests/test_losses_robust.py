"""Focal, ASL, Hill, SPLC against numpy formulas from docs/methods.md (and SPLC's switch at epoch 2)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spmlbench.losses import build_loss

Z = np.array([[2.0, -1.0, 0.5, 0.3], [-0.3, 1.5, -2.0, 0.02]])
S = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])


def sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def value(name: str, epoch: int = 1, z: np.ndarray = Z, **kw: object) -> float:
    loss = build_loss(name, num_classes=z.shape[1], **kw)
    loss.start_epoch(epoch, 10)
    return float(loss(torch.tensor(z), torch.tensor(S), None))


def test_focal() -> None:
    p, eps = sig(Z), 1e-5  # the Cole-derived codebase's log epsilon (Zhou et al. 2022 ran focal there)
    for g in (2.0, 0.5):
        want = np.where(S == 1, (1 - p) ** g * -np.log(p + eps), p**g * -np.log(1 - p + eps)).mean()
        assert value("focal", gamma=g) == pytest.approx(want, rel=1e-9)
    # single entry by hand: z = 0, positive, gamma 2: 0.25 * -log(0.5 + 1e-5) = 0.25 * 0.69312718 = 0.17328180
    loss = build_loss("focal", num_classes=1)
    assert float(loss(torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1))) == pytest.approx(0.1732817952, abs=1e-9)


def test_asl() -> None:
    p = sig(Z)
    pm = np.maximum(p - 0.05, 0.0)
    pos = (1 - p) ** 0 * -np.log(np.maximum(p, 1e-8))
    neg = pm**4 * -np.log(np.maximum(1 - pm, 1e-8))
    assert value("asl") == pytest.approx(np.where(S == 1, pos, neg).mean(), rel=1e-9)
    pm = np.maximum(p - 0.2, 0.0)
    pos = (1 - p) ** 1 * -np.log(p)
    neg = pm**2 * -np.log(1 - pm)
    assert value("asl", gamma_pos=1, gamma_neg=2, clip=0.2) == pytest.approx(np.where(S == 1, pos, neg).mean(), rel=1e-9)


def test_asl_focusing_weights_are_detached() -> None:
    z = torch.tensor(Z, requires_grad=True)
    build_loss("asl", num_classes=4, gamma_pos=1.0)(z, torch.tensor(S)).backward()
    p = sig(Z)
    pm = np.maximum(p - 0.05, 0.0)
    w = np.where(S == 1, (1 - p) ** 1.0, pm**4)  # held constant
    d_pos = -(1 - p)  # d/dz -log p
    d_neg = np.where(p > 0.05, p * (1 - p) / (1 - p + 0.05), 0.0)  # d/dz -log(1 - p + m)
    want = w * np.where(S == 1, d_pos, d_neg) / Z.size
    assert np.allclose(z.grad.numpy(), want, rtol=1e-9, atol=1e-15)


def test_hill() -> None:
    p, pm = sig(Z), sig(Z - 1.0)
    want = np.where(S == 1, (1 - pm) ** 2 * -np.log(pm), (1.5 - p) * p**2).mean()
    assert value("hill") == pytest.approx(want, rel=1e-9)
    pm = sig(Z - 0.5)
    want = np.where(S == 1, (1 - pm) ** 1 * -np.log(pm), (2.0 - p) * p**2).mean()
    assert value("hill", lamb=2.0, margin=0.5, gamma=1.0) == pytest.approx(want, rel=1e-9)


def _splc_want(flip: np.ndarray) -> float:
    p, pm = sig(Z), sig(Z - 1.0)
    pos = (1 - pm) ** 2 * -np.log(pm)
    pseudo = (1 - p) ** 2 * -np.log(p)
    neg = p**2 * -np.log(1 - p)
    return float(np.where(S == 1, pos, np.where(flip, pseudo, neg)).mean())


def test_splc_switches_at_epoch_2() -> None:
    # tau = 0.6 <=> z > log(1.5) = 0.405: unobserved z = 0.5 flips, 0.3 and 0.02 do not; observed 1.5 keeps its margin
    assert math.log(1.5) == pytest.approx(0.405465, abs=1e-6)
    none = np.zeros_like(S, dtype=bool)
    flip = np.zeros_like(S, dtype=bool)
    flip[0, 2] = True
    assert value("splc", epoch=1) == pytest.approx(_splc_want(none), rel=1e-9)
    assert value("splc", epoch=2) == pytest.approx(_splc_want(flip), rel=1e-9)
    assert value("splc", epoch=5) == pytest.approx(_splc_want(flip), rel=1e-9)
    assert value("splc", epoch=2, change_epoch=3) == pytest.approx(_splc_want(none), rel=1e-9)
    flip2 = flip.copy()
    flip2[0, 3] = flip2[1, 3] = True  # tau = 0.5: z = 0.3 and 0.02 flip too
    assert value("splc", epoch=2, tau=0.5) == pytest.approx(_splc_want(flip2), rel=1e-9)
