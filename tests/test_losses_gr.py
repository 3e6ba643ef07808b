"""GR loss: schedule per epoch, switches, k/v, value and analytic gradient (k, v constant)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spmlbench.losses import build_loss

Z = np.array([[2.0, -1.0, 0.5, 0.0], [-0.3, 1.5, -2.0, 3.0]])
S = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])


def sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def schedule(epochs: int = 8, **kw: object) -> list[tuple[float, float, float, float]]:
    loss = build_loss("gr", num_classes=4, **kw)
    rows = []
    for e in range(1, epochs + 1):
        loss.start_epoch(e, epochs)
        c = loss.current()
        rows.append((c["w"], c["b"], c["mu"], c["sigma"]))
    return rows


def test_default_schedule_t8() -> None:
    rows = schedule()
    assert [r[0] for r in rows] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75], abs=1e-12)
    assert [r[1] for r in rows] == pytest.approx([-2.0] * 8, abs=1e-12)
    assert [r[2] for r in rows] == pytest.approx([0.5375, 0.575, 0.6125, 0.65, 0.6875, 0.725, 0.7625, 0.8], abs=1e-12)
    assert [r[3] for r in rows] == pytest.approx([1.8125, 1.625, 1.4375, 1.25, 1.0625, 0.875, 0.6875, 0.5], abs=1e-12)


def test_schedule_switches() -> None:
    assert schedule(schedule=False) == [(0.0, -2.0, 0.5, 2.0)] * 8  # static: the initial values
    rows = schedule(lag=False)
    assert [r[0] for r in rows] == pytest.approx([0.25 * e for e in range(1, 9)], abs=1e-12)  # reaches wT = 2
    rows = schedule(beta=[0, 10, -2, -8])  # b: -2 + (-6) * (e - 1) / 8
    assert [r[1] for r in rows] == pytest.approx([-2 - 0.75 * (e - 1) for e in range(1, 9)], abs=1e-12)
    assert rows[-1][0] == pytest.approx(8.75)
    rows = schedule(linear_init=2)  # T - n = 6
    assert [r[2] for r in rows] == pytest.approx([0.5, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8], abs=1e-12)
    assert [r[0] for r in rows] == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1, 4 / 3, 5 / 3], abs=1e-12)


def test_k_and_v_functions() -> None:
    loss = build_loss("gr", num_classes=4)
    loss.start_epoch(1, 8)
    p = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    # epoch 1: w = 0, b = -2 -> k = sigmoid(-2) = 0.11920292; mu = 0.5375, sigma = 1.8125
    assert loss.k(p).tolist() == pytest.approx([0.11920292202] * 3, abs=1e-10)
    want_v = [math.exp(-((x - 0.5375) ** 2) / (2 * 1.8125**2)) for x in (0.0, 0.5, 1.0)]
    assert loss.v(p).tolist() == pytest.approx(want_v, abs=1e-12)
    assert loss.v(p)[1].item() == pytest.approx(0.99978599, abs=1e-8)  # exp(-0.00140625 / 6.5703125)
    loss.start_epoch(5, 8)  # w = 1, b = -2
    assert loss.k(p).tolist() == pytest.approx([1 / (1 + math.exp(2)), 1 / (1 + math.exp(1.5)), 1 / (1 + math.exp(1))])
    off = build_loss("gr", num_classes=4, use_k=False, use_v=False)
    assert off.k(p).tolist() == [0.0, 0.0, 0.0] and off.v(p).tolist() == [1.0, 1.0, 1.0]


def _want(z: np.ndarray, w: float, b: float, mu: float, sg: float, q2: float = 0.01, q3: float = 1.0,
          use_k: bool = True, use_v: bool = True) -> float:
    p = sig(z)
    k = 1 / (1 + np.exp(-(w * p + b))) if use_k else 0 * p
    v = np.exp(-((p - mu) ** 2) / (2 * sg**2)) if use_v else 1 + 0 * p
    l2 = (1 - p**q2) / q2
    l3 = (1 - (1 - p) ** q3) / q3
    return float(np.where(S == 1, -np.log(p + 1e-7), v * (k * l2 + (1 - k) * l3)).mean())


@pytest.mark.parametrize(("epoch", "w", "mu", "sg"), [(1, 0.0, 0.5375, 1.8125), (5, 1.0, 0.6875, 1.0625), (8, 1.75, 0.8, 0.5)])
def test_value_per_epoch(epoch: int, w: float, mu: float, sg: float) -> None:
    loss = build_loss("gr", num_classes=4)
    loss.start_epoch(epoch, 8)
    assert float(loss(torch.tensor(Z), torch.tensor(S))) == pytest.approx(_want(Z, w, -2.0, mu, sg), rel=1e-9)


def test_value_with_switches_and_q() -> None:
    loss = build_loss("gr", num_classes=4, q2=0.5, q3=1.5, use_k=False)
    loss.start_epoch(3, 8)
    assert float(loss(torch.tensor(Z), torch.tensor(S))) == pytest.approx(
        _want(Z, 0.5, -2.0, 0.6125, 1.4375, q2=0.5, q3=1.5, use_k=False), rel=1e-9)
    loss = build_loss("gr", num_classes=4, use_v=False, schedule=False)
    loss.start_epoch(6, 8)
    assert float(loss(torch.tensor(Z), torch.tensor(S))) == pytest.approx(_want(Z, 0.0, -2.0, 0.5, 2.0, use_v=False), rel=1e-9)


@pytest.mark.parametrize(("q2", "q3", "epoch"), [(0.01, 1.0, 4), (0.5, 1.5, 7), (2.0, 0.5, 2)])
def test_gradient_equals_analytic_with_k_v_constant(q2: float, q3: float, epoch: int) -> None:
    loss = build_loss("gr", num_classes=4, q2=q2, q3=q3)
    loss.start_epoch(epoch, 8)
    c = loss.current()
    z = torch.tensor(Z, requires_grad=True)
    loss(z, torch.tensor(S)).backward()
    p = sig(Z)
    k = 1 / (1 + np.exp(-(c["w"] * p + c["b"])))
    v = np.exp(-((p - c["mu"]) ** 2) / (2 * c["sigma"] ** 2))
    d_l1 = -p * (1 - p) / (p + 1e-7)
    d_l2 = -(p**q2) * (1 - p)  # d/dz (1 - p^q2)/q2
    d_l3 = (1 - p) ** q3 * p  # d/dz (1 - (1-p)^q3)/q3
    want = np.where(S == 1, d_l1, v * (k * d_l2 + (1 - k) * d_l3)) / Z.size
    assert np.allclose(z.grad.numpy(), want, rtol=1e-9, atol=1e-15)


def test_invalid_schedule_length() -> None:
    from spmlbench.errors import ConfigError

    loss = build_loss("gr", num_classes=4, linear_init=8)
    with pytest.raises(ConfigError, match="gr.linear_init=8"):
        loss.start_epoch(1, 8)


def test_q_zero_is_exact_log_limit() -> None:
    """q2 = q3 = 0 gives L2 = -log p, L3 = -log(1-p) (the q -> 0 limit used by the ablation)."""
    loss = build_loss("gr", num_classes=4, q2=0.0, q3=0.0)
    loss.start_epoch(2, 8)
    p = sig(Z)
    w, b, mu, sg = 0.25, -2.0, 0.575, 1.625  # epoch 2 of 8: w lags one epoch
    k = 1 / (1 + np.exp(-(w * p + b)))
    v = np.exp(-((p - mu) ** 2) / (2 * sg**2))
    want = np.where(S == 1, -np.log(p + 1e-7), v * (k * -np.log(p) + (1 - k) * -np.log(1 - p))).mean()
    assert float(loss(torch.tensor(Z), torch.tensor(S))) == pytest.approx(float(want), rel=1e-9)
    # and a tiny q is already close to it
    near = build_loss("gr", num_classes=4, q2=1e-6, q3=1e-6)
    near.start_epoch(2, 8)
    assert float(near(torch.tensor(Z), torch.tensor(S))) == pytest.approx(float(want), rel=1e-4)
