"""Fused gradients of the Cole et al. losses (BCE, AN, AN-LS, WAN, EPR, ROLE).

Each loss's hand-written logit derivative is checked three ways: against finite differences
(float64 ``gradcheck``), against the paper's formula written out here in plain torch and
differentiated by autograd, and ``value_and_grad`` (no graph) against ``forward`` + ``backward``.
ROLE's ``value_and_grad`` also accumulates its ``G`` gradient; it is checked the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor
from torch.autograd import gradcheck

from spmlbench.losses import build_batched_loss
from spmlbench.losses.base import BatchedLoss

M, N, B, C = 3, 10, 4, 5
ENTRY_LOSSES = ["bce", "an", "an_ls", "wan", "epr"]
ALL = ENTRY_LOSSES + ["role"]
CONFIGS: dict[str, list[dict[str, Any]]] = {
    "bce": [{}, {"eps": 1e-3}, {"eps": 1e-7}],
    "an": [{}, {"eps": 1e-3}, {"eps": 1e-7}],
    "an_ls": [{}, {"ls_coef": 0.3, "eps": 1e-3}, {"ls_coef": 0.0}],
    "wan": [{}, {"eps": 1e-3}, {"eps": 1e-6}],
    "epr": [{"expected_num_pos": 1.5}, {"expected_num_pos": 3.0, "eps": 1e-3}, {"expected_num_pos": 0.5}],
    "role": [{"expected_num_pos": 1.5}, {"expected_num_pos": 3.0, "eps": 1e-3}, {"expected_num_pos": 0.5}],
}


def _loss(name: str, dtype: torch.dtype = torch.float64) -> BatchedLoss:
    loss = build_batched_loss(name, CONFIGS[name], num_classes=C, num_train=N).to(dtype)
    if name == "role":
        g = torch.Generator().manual_seed(11)
        loss.init_state((torch.rand(N, C, generator=g) < 0.3).float(), [0, 1, 2])
    return loss


def _batch(seed: int, per_config: bool, dtype: torch.dtype = torch.float64,
           scale: float = 2.0) -> tuple[Tensor, Tensor, Tensor]:
    """Logits (M, B, C), bool observed (B, C) or (M, B, C), index (B,) or (M, B) (with a repeated row)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(M, B, C, generator=g, dtype=torch.float64).mul(scale).to(dtype)
    if per_config:
        idx = torch.stack([torch.randperm(N, generator=g)[:B] for _ in range(M)])
        idx[1, 0] = idx[1, 2]  # a row twice in one config's batch: its G gradients add up
        s = torch.rand(M, B, C, generator=g) < 0.3
    else:
        idx = torch.tensor([3, 7, 3, 0])
        s = torch.rand(B, C, generator=g) < 0.3
    return z, s, idx


# -- independent references: the papers' formulas in plain torch, differentiated by autograd ------------
def _eps(name: str, like: Tensor) -> Tensor:
    return torch.tensor([c.get("eps", 1e-5) for c in CONFIGS[name]], dtype=like.dtype).view(-1, 1, 1)


def _nlog(x: Tensor, eps: Tensor) -> Tensor:
    return -torch.log(x + eps)


def _reference(name: str, z: Tensor, s: Tensor) -> Tensor:
    """The per-config loss (M,) of ``name`` (not ROLE) from its published formula."""
    p, eps, y = torch.sigmoid(z), _eps(name, z), s.to(z.dtype)
    pos, neg = _nlog(p, eps), _nlog(1 - p, eps)
    if name in ("bce", "an"):
        mat = y * pos + (1 - y) * neg
    elif name == "an_ls":
        ls = torch.tensor([c.get("ls_coef", 0.1) for c in CONFIGS[name]], dtype=z.dtype).view(-1, 1, 1)
        mat = y * ((1 - ls) * pos + ls * neg) + (1 - y) * ((1 - ls) * neg + ls * pos)
    elif name == "wan":
        mat = y * pos + (1 - y) * neg / (C - 1)
    else:  # epr
        k = torch.tensor([c["expected_num_pos"] for c in CONFIGS[name]], dtype=z.dtype)
        return (y * pos).mean(dim=(1, 2)) + (p.sum(dim=2).mean(dim=1) - k) ** 2 / C**2
    return mat.mean(dim=(1, 2))


def _role_reference(G: Tensor, z: Tensor, s: Tensor, idx: Tensor) -> Tensor:
    """ROLE (Cole et al. 2021, eq. of the online label estimation): cross targets detached."""
    g = G[torch.arange(M).view(-1, 1), idx] if idx.dim() == 2 else G[:, idx]
    p, q, eps, y = torch.sigmoid(z), torch.sigmoid(g), _eps("role", z), s.to(z.dtype)
    k = torch.tensor([c["expected_num_pos"] for c in CONFIGS["role"]], dtype=z.dtype)
    pd, qd = p.detach(), q.detach()
    mat = 0.5 * y * (_nlog(p, eps) + _nlog(q, eps)) + 0.5 * (
        qd * _nlog(p, eps) + (1 - qd) * _nlog(1 - p, eps) + pd * _nlog(q, eps) + (1 - pd) * _nlog(1 - q, eps))
    reg: Callable[[Tensor], Tensor] = lambda x: (x.sum(dim=2).mean(dim=1) - k) ** 2 / C**2  # noqa: E731
    return mat.mean(dim=(1, 2)) + 0.5 * (reg(p) + reg(q))


# -- finite differences ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ENTRY_LOSSES)
@pytest.mark.parametrize("per_config", [False, True])
def test_entry_loss_gradient_passes_gradcheck(name: str, per_config: bool) -> None:
    loss = _loss(name)
    z, s, idx = _batch(1, per_config, scale=3.0)
    assert gradcheck(lambda x: loss(x, s, idx), (z.requires_grad_(True),))


# -- the formulas of the papers ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ENTRY_LOSSES)
@pytest.mark.parametrize("per_config", [False, True])
def test_entry_loss_matches_the_formula_and_its_autograd_gradient(name: str, per_config: bool) -> None:
    loss = _loss(name)
    z, s, idx = _batch(2, per_config)
    z.requires_grad_(True)
    go = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)  # a non-trivial upstream gradient
    want = _reference(name, z, s)
    (want_dz,) = torch.autograd.grad(want, z, go)
    got = loss(z, s, idx)
    (got_dz,) = torch.autograd.grad(got, z, go)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(got_dz, want_dz, rtol=1e-10, atol=1e-15)


def test_bce_gradient_by_hand() -> None:
    """Two entries worked out on paper: d/dz -log(sigmoid(+-z) + eps) / (B C) with B C = 2."""
    loss = build_batched_loss("bce", [{"eps": 0.5}], num_classes=2).double()
    z = torch.tensor([[[0.0, 0.0]]], dtype=torch.float64)
    values, dz = loss.value_and_grad(z, torch.tensor([[True, False]]))
    # p = 0.5 on both sides: value log(1/1) = 0; derivative -+ 0.5 * 0.5 / (0.5 + 0.5) / 2
    assert values.tolist() == [0.0]
    assert dz.tolist() == [[[-0.125, 0.125]]]


def test_wan_and_epr_gradients_by_hand() -> None:
    """WAN: a negative's derivative is 1/(C-1) of AN's; EPR: an unobserved entry only feels the regulariser."""
    z = torch.tensor([[[0.0, 0.0, 0.0]]], dtype=torch.float64)
    s = torch.tensor([[True, False, False]])
    wan = build_batched_loss("wan", [{"eps": 0.5}], num_classes=3).double()
    an = build_batched_loss("an", [{"eps": 0.5}], num_classes=3).double()
    dw, da = wan.value_and_grad(z, s)[1], an.value_and_grad(z, s)[1]
    assert dw[0, 0, 0] == da[0, 0, 0] and dw[0, 0, 1] == pytest.approx(da[0, 0, 1].item() / 2, rel=1e-15)
    epr = build_batched_loss("epr", [{"expected_num_pos": 1.0, "eps": 0.5}], num_classes=3).double()
    value, dz = epr.value_and_grad(z, s)
    # sum_c p = 1.5 = k + 0.5: regulariser 0.25 / 9; its derivative 2 * 0.5 / 9 * p (1 - p) = 1 / 36 per entry;
    # the observed entry adds -p (1 - p) / (p + eps) / 3 = -1/12
    assert value.item() == pytest.approx(0.25 / 9, rel=1e-15)
    assert dz[0, 0].tolist() == pytest.approx([1 / 36 - 1 / 12, 1 / 36, 1 / 36], rel=1e-14)


# -- value_and_grad without a graph against forward + backward ---------------------------------------
def _forward_backward(loss: BatchedLoss, z: Tensor, s: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    leaf = z.clone().requires_grad_(True)
    values = loss(leaf, s, idx)
    values.sum().backward()
    assert leaf.grad is not None
    return values.detach(), leaf.grad


@pytest.mark.parametrize("name", ENTRY_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_config", [False, True])
def test_value_and_grad_equals_forward_and_backward(name: str, dtype: torch.dtype, per_config: bool) -> None:
    loss = _loss(name, dtype)
    assert loss.fused_grad
    z, s, idx = _batch(3, per_config, dtype, scale=3.0)
    z[0, 0, 0], z[1, 1, 1] = 30.0, -30.0  # saturated sigmoids
    values, dz = loss.value_and_grad(z, s, idx)
    want_values, want_dz = _forward_backward(loss, z, s, idx)
    assert torch.equal(values, want_values)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(dz, want_dz, rtol=tol, atol=tol * 1e-3)
    assert torch.isfinite(dz).all()


@pytest.mark.parametrize("per_config", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_role_value_and_grad_equals_forward_and_backward(per_config: bool, dtype: torch.dtype) -> None:
    z, s, idx = _batch(4, per_config, dtype, scale=3.0)
    auto, fused = _loss("role", dtype), _loss("role", dtype)
    assert fused.fused_grad and torch.equal(auto.G, fused.G)
    want_values, want_dz = _forward_backward(auto, z, s, idx)
    values, dz = fused.value_and_grad(z, s, idx)
    assert torch.equal(values, want_values)
    tol = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(dz, want_dz, rtol=tol, atol=tol * 1e-3)
    assert fused.G.grad is not None and auto.G.grad is not None
    torch.testing.assert_close(fused.G.grad, auto.G.grad, rtol=tol, atol=tol * 1e-3)
    assert (fused.G.grad != 0).any(dim=2).sum() == (auto.G.grad != 0).any(dim=2).sum()  # the same rows touched
    # a second step adds to G.grad, as autograd's accumulation does
    z2, s2, idx2 = _batch(5, per_config, dtype)
    _forward_backward(auto, z2, s2, idx2)
    fused.value_and_grad(z2, s2, idx2)
    torch.testing.assert_close(fused.G.grad, auto.G.grad, rtol=tol, atol=tol * 1e-3)


@pytest.mark.parametrize("per_config", [False, True])
def test_role_gradient_after_clearing_holds_only_the_new_batch(per_config: bool) -> None:
    """The trainer clears G.grad every step; each step's G.grad is that step's gradient alone (the
    reused buffer's rows from the step before are zero again), equal to a fresh autograd backward."""
    auto, fused = _loss("role"), _loss("role")
    for seed in (8, 9, 10):
        z, s, idx = _batch(seed, per_config)
        idx = (idx + seed) % N  # other rows than the step before
        auto.G.grad = None
        fused.G.grad = None
        _forward_backward(auto, z, s, idx)
        fused.value_and_grad(z, s, idx)
        assert fused.G.grad is not None and auto.G.grad is not None
        torch.testing.assert_close(fused.G.grad, auto.G.grad, rtol=1e-12, atol=1e-15)
        assert (fused.G.grad != 0).any(dim=2).sum() == (auto.G.grad != 0).any(dim=2).sum()


@pytest.mark.parametrize("per_config", [False, True])
def test_role_value_and_grad_matches_the_formula(per_config: bool) -> None:
    loss = _loss("role")
    z, s, idx = _batch(6, per_config)
    G = loss.G.detach().clone().requires_grad_(True)
    zz = z.clone().requires_grad_(True)
    want = _role_reference(G, zz, s, idx)
    want_dz, want_dG = torch.autograd.grad(want.sum(), (zz, G))
    values, dz = loss.value_and_grad(z, s, idx)
    torch.testing.assert_close(values, want.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(dz, want_dz, rtol=1e-10, atol=1e-15)
    assert loss.G.grad is not None
    torch.testing.assert_close(loss.G.grad, want_dG, rtol=1e-10, atol=1e-15)
    seen = torch.zeros(M, N, dtype=torch.bool)
    seen[torch.arange(M).view(-1, 1), idx.expand(M, B)] = True
    assert (loss.G.grad[~seen] == 0).all()  # rows outside the batch: exact zeros


def test_role_value_and_grad_leaves_a_frozen_g_alone_and_needs_init() -> None:
    loss = _loss("role")
    loss.G.requires_grad_(False)
    z, s, idx = _batch(7, True)
    values, dz = loss.value_and_grad(z, s, idx)
    assert loss.G.grad is None and values.shape == (M,) and dz.shape == (M, B, C)
    fresh = build_batched_loss("role", CONFIGS["role"], num_classes=C, num_train=N)
    with pytest.raises(RuntimeError, match="init_state"):
        fresh.value_and_grad(z.float(), s, idx)


@pytest.mark.parametrize("name", ALL)
def test_value_and_grad_of_a_config_is_bit_identical_alone_and_inside_a_batched_call(name: str) -> None:
    """The trainer's call (M = 3, per-config rows, bool observed, float32): config m alone gives the same bits."""
    gen = torch.Generator().manual_seed(8)
    n, c, b = 40, 20, 8
    obs = torch.zeros(n, c)
    obs[torch.arange(n), torch.randint(0, c, (n,), generator=gen)] = 1
    idx = torch.stack([torch.randperm(n, generator=gen)[:b] for _ in range(M)])
    z = torch.randn(M, b, c, generator=gen) * 3

    def run(lo: int, hi: int) -> tuple[Tensor, Tensor, list[Tensor | None]]:
        loss = build_batched_loss(name, CONFIGS[name][lo:hi], num_classes=c, num_train=n, dataset="voc")
        loss.init_state(obs, list(range(lo, hi)))
        values, dz = loss.value_and_grad(z[lo:hi], obs[idx[lo:hi]] > 0.5, idx[lo:hi])
        return values, dz, [p.grad for group in loss.param_groups(1.0) for p in group["params"]]

    v_all, dz_all, dp_all = run(0, M)
    for k in range(M):
        v, dz, dp = run(k, k + 1)
        assert torch.equal(v[0], v_all[k]) and torch.equal(dz[0], dz_all[k]), (name, k)
        for a, b_ in zip(dp, dp_all):
            assert a is not None and b_ is not None and torch.equal(a[0], b_[k]), (name, k)
