"""Cole et al. 2021 losses against values derived from docs/methods.md with independent numpy formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spmlbench.losses import build_batched_loss, build_loss, loss_info

Z = np.array([[2.0, -1.0, 0.5, 0.0], [-0.3, 1.5, -2.0, 3.0]])
S = np.array([[1, 0, 0, 0], [0, 1, 0, 0]])
EPS = 1e-5


def sig(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def nl(x: np.ndarray) -> np.ndarray:
    return -np.log(x + EPS)


def run(name: str, z: np.ndarray = Z, s: np.ndarray = S, **kw: object) -> float:
    loss = build_loss(name, num_classes=z.shape[1], **kw)
    return float(loss(torch.tensor(z), torch.tensor(s), None))


def test_an_single_entry_by_hand() -> None:
    # z = 0 -> p = 0.5; -log(0.5 + 1e-5) = 0.69314718 - 2e-5 (to 1e-9)
    assert run("an", np.zeros((1, 1)), np.ones((1, 1))) == pytest.approx(0.6931271806, abs=1e-9)
    assert run("an", np.zeros((1, 1)), np.zeros((1, 1))) == pytest.approx(0.6931271806, abs=1e-9)


def test_an_and_bce() -> None:
    p = sig(Z)
    want = np.where(S == 1, nl(p), nl(1 - p)).mean()
    assert run("an") == pytest.approx(want, rel=1e-10)
    assert run("bce") == pytest.approx(want, rel=1e-10)  # bce: same formula, on clean labels
    assert loss_info("bce").uses_clean_labels and not loss_info("an").uses_clean_labels


def test_an_ls() -> None:
    p, ls = sig(Z), 0.1
    want = np.where(S == 1, (1 - ls) * nl(p) + ls * nl(1 - p), (1 - ls) * nl(1 - p) + ls * nl(p)).mean()
    assert run("an_ls") == pytest.approx(want, rel=1e-10)
    ls = 0.3
    want = np.where(S == 1, (1 - ls) * nl(p) + ls * nl(1 - p), (1 - ls) * nl(1 - p) + ls * nl(p)).mean()
    assert run("an_ls", ls_coef=0.3) == pytest.approx(want, rel=1e-10)


def test_wan() -> None:
    p = sig(Z)
    want = np.where(S == 1, nl(p), nl(1 - p) / 3.0).mean()  # C = 4 -> 1 / (C - 1)
    assert run("wan") == pytest.approx(want, rel=1e-10)


def test_epr_with_dataset_default_and_override() -> None:
    p = sig(Z)
    for k, kw in ((1.5, {"dataset": "voc"}), (31.4, {"dataset": "cub"}), (2.0, {"expected_num_pos": 2.0})):
        want = np.where(S == 1, nl(p), 0.0).mean() + (p.sum(1).mean() - k) ** 2 / 4**2
        assert run("epr", **kw) == pytest.approx(want, rel=1e-10)


OBS_TRAIN = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]])


def test_role_initial_label_matrix() -> None:
    loss = build_batched_loss("role", [{"expected_num_pos": 1.5}, {"expected_num_pos": 2.0}], num_classes=4, num_train=3)
    loss.init_state(OBS_TRAIN, seed=7)
    u = torch.rand(3, 4, generator=torch.Generator().manual_seed(7)).double()
    logit06 = math.log(0.6 / 0.4)
    want = logit06 * (2 * u - 1)
    want[OBS_TRAIN == 1] = math.log(0.995 / 0.005)  # 5.2933048
    for m in range(2):  # every config gets the same draw
        g = loss.G[m].detach().double()
        assert torch.allclose(g, want, atol=1e-6)
    unobs = loss.G[0].detach()[OBS_TRAIN == 0]
    assert float(unobs.abs().max()) <= logit06 + 1e-6 and float(unobs.std()) > 0.05
    assert loss.G[0, 0, 0].item() == pytest.approx(5.2933048, abs=1e-6)


def _role(seed: int = 7, lr_mult: float = 10.0):
    loss = build_loss("role", num_classes=4, num_train=3, expected_num_pos=1.5, lr_mult=lr_mult)
    loss.init_state(OBS_TRAIN, seed=seed)
    return loss


def test_role_value_and_param_group() -> None:
    loss = _role()
    index = torch.tensor([2, 0])
    obs = OBS_TRAIN[index]
    g = loss.batched.G[0].detach().double().numpy()[[2, 0]]
    p, q, s, k = sig(Z), sig(g), obs.numpy(), 1.5
    mat = 0.5 * (np.where(s == 1, nl(p), 0) + np.where(s == 1, nl(q), 0))
    mat += 0.5 * (q * nl(p) + (1 - q) * nl(1 - p) + p * nl(q) + (1 - p) * nl(1 - q))
    reg = 0.5 * ((p.sum(1).mean() - k) ** 2 / 16 + (q.sum(1).mean() - k) ** 2 / 16)
    got = loss(torch.tensor(Z), obs, index)
    assert float(got.detach()) == pytest.approx(mat.mean() + reg, rel=1e-6)
    groups = loss.param_groups(1e-3)
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(1e-2)
    assert groups[0]["params"][0] is loss.batched.G
    assert _role(lr_mult=3.0).param_groups(0.1)[0]["lr"] == pytest.approx(0.3)


def test_role_gradient_wrt_logits_treats_cross_targets_as_constants() -> None:
    loss = _role()
    index = torch.tensor([2, 0])
    obs = OBS_TRAIN[index].numpy()
    z = torch.tensor(Z, requires_grad=True)
    loss(z, torch.tensor(obs), index).backward()
    q = sig(loss.batched.G[0].detach().double().numpy()[[2, 0]])
    p = sig(Z)
    dp = p * (1 - p)
    d_lf = np.where(obs == 1, -dp / (p + EPS), 0.0)
    d_xf = q * (-dp / (p + EPS)) + (1 - q) * (dp / (1 - p + EPS))  # q' constant; x_g's p' constant
    b, c = Z.shape
    d_reg = 2 * (p.sum(1).mean() - 1.5) / c**2 / b * dp
    want = 0.5 * (d_lf + d_xf) / (b * c) + 0.5 * d_reg
    assert np.allclose(z.grad.numpy(), want, rtol=1e-6, atol=1e-12)
    assert loss.batched.G.grad is not None and torch.isfinite(loss.batched.G.grad).all()


def test_role_requires_init() -> None:
    loss = build_loss("role", num_classes=4, num_train=3, expected_num_pos=1.5)
    with pytest.raises(RuntimeError, match="init_state"):
        loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.tensor([0, 1]))


def test_role_gradient_wrt_label_logits_treats_p_as_constant() -> None:
    # d/dG of mean_BC(0.5 l_g + 0.5 x_g) + 0.5 R(q): p' constant in x_g, x_f's q' constant (no G grad),
    # l_g and R(q) keep theirs; rows outside the batch get zero gradient.
    loss = _role()
    index = torch.tensor([2, 0])
    obs = OBS_TRAIN[index].numpy()
    loss(torch.tensor(Z), torch.tensor(obs), index).backward()
    g = loss.batched.G[0].detach().double().numpy()[[2, 0]]
    q, p = sig(g), sig(Z)
    dq = q * (1 - q)
    d_lg = np.where(obs == 1, -dq / (q + EPS), 0.0)
    d_xg = p * (-dq / (q + EPS)) + (1 - p) * (dq / (1 - q + EPS))
    b, c = Z.shape
    d_reg = 2 * (q.sum(1).mean() - 1.5) / c**2 / b * dq
    want = 0.5 * (d_lg + d_xg) / (b * c) + 0.5 * d_reg
    grad = loss.batched.G.grad[0].double().numpy()
    assert np.allclose(grad[[2, 0]], want, rtol=1e-5, atol=1e-9)
    assert not grad[1].any()
