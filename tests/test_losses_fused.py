"""The fused pieces of the batched losses: ROLE's one-node autograd.Function and the sign helper."""

from __future__ import annotations

import pytest
import torch

from device_support import DEVICES, no_host_sync
from pseudo_support import attach_test_pseudo
from spmlbench.losses import build_batched_loss, list_losses
from spmlbench.losses.base import signs
from spmlbench.losses.fused.cole import ROLEValue

M, N, B, C = 2, 6, 4, 3


def _inputs(per_config: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(M, B, C, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    G = (torch.randn(M, N, C, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    if per_config:
        index = torch.tensor([[0, 2, 2, 5], [1, 1, 3, 4]])  # repeated rows: their gradients add up
        s = torch.rand(M, B, C, generator=g) > 0.6
    else:
        index = torch.tensor([4, 0, 4, 3])
        s = torch.rand(1, B, C, generator=g) > 0.6
    rows = (torch.arange(M).view(-1, 1), index)
    eps = torch.tensor([1e-5, 1e-3], dtype=torch.float64).view(-1, 1, 1)
    k = torch.tensor([1.5, 0.7], dtype=torch.float64)
    sign = torch.tensor([1.0, -1.0], dtype=torch.float64).view(2, 1, 1, 1, 1)
    return z, G, rows, s, eps, k, sign


def _reference(z, G, rows, s, eps, k):
    """ROLE written out with plain autograd: cross targets detached, EPR on p and on q."""
    g = G[rows]
    p, q = torch.sigmoid(z), torch.sigmoid(g)
    nlog = lambda x: -torch.log(x + eps)  # noqa: E731
    pd, qd = p.detach(), q.detach()
    mat = 0.5 * s * (nlog(p) + nlog(q)) + 0.5 * (qd * nlog(p) + (1 - qd) * nlog(1 - p)
                                                 + pd * nlog(q) + (1 - pd) * nlog(1 - q))
    reg = lambda x: (x.sum(-1).mean(-1) - k) ** 2 / C**2  # noqa: E731
    return mat.mean(dim=(-2, -1)) + 0.5 * (reg(p) + reg(q))


@pytest.mark.parametrize("per_config", [False, True])
def test_role_backward_passes_gradcheck_with_fixed_cross_targets(per_config: bool) -> None:
    z, G, rows, s, eps, k, sign = _inputs(per_config)
    gen = torch.Generator().manual_seed(9)
    weights = (torch.randn(M, B, C, generator=gen, dtype=torch.float64),
               torch.randn(M, B, C, generator=gen, dtype=torch.float64))

    def fn(z: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        return ROLEValue.apply(z, G, rows, s, eps, -k, sign, weights)

    assert torch.autograd.gradcheck(fn, (z, G), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("per_config", [False, True])
def test_role_matches_plain_autograd_reference(per_config: bool) -> None:
    z, G, rows, s, eps, k, sign = _inputs(per_config, seed=1)
    go = torch.tensor([1.0, -0.5], dtype=torch.float64)  # a non-trivial upstream gradient
    want = _reference(z, G, rows, s, eps, k)
    want_dz, want_dG = torch.autograd.grad(want, (z, G), go)
    got = ROLEValue.apply(z, G, rows, s, eps, -k, sign)
    got_dz, got_dG = torch.autograd.grad(got, (z, G), go)
    assert torch.allclose(got, want, rtol=1e-12, atol=0)
    assert torch.allclose(got_dz, want_dz, rtol=1e-10, atol=1e-15)
    assert torch.allclose(got_dG, want_dG, rtol=1e-10, atol=1e-15)
    untouched = torch.ones(M, N, dtype=torch.bool)
    untouched[rows[0], rows[1]] = False
    assert (got_dG[untouched] == 0).all()  # rows outside the batch get an exact zero gradient


def test_role_gradient_only_for_logits_when_g_is_frozen() -> None:
    z, G, rows, s, eps, k, sign = _inputs(False, seed=2)
    G.requires_grad_(False)
    ROLEValue.apply(z, G, rows, s, eps, -k, sign).sum().backward()
    assert z.grad is not None and G.grad is None


def test_role_refuses_a_second_order_backward() -> None:
    z, G, rows, s, eps, k, sign = _inputs(False)
    value = ROLEValue.apply(z, G, rows, s, eps, -k, sign).sum()
    with pytest.raises(RuntimeError, match="one backward pass only"):
        torch.autograd.grad(value, z, create_graph=True)


def test_signs_flip_unobserved_logits_exactly() -> None:
    loss = build_batched_loss("an", [{}], num_classes=C)
    gen = torch.Generator().manual_seed(3)
    z = (torch.randn(M, B, C, generator=gen) * 5).requires_grad_(True)
    s = torch.rand(1, B, C, generator=gen) > 0.5
    got = z * signs(loss, s, z)
    assert torch.equal(got, torch.where(s, z, -z))
    got.sum().backward()
    assert torch.equal(z.grad, torch.where(s, 1.0, -1.0).expand(M, B, C))
    pair = signs(loss, s, z, (2.0, 3.0), (5.0, 7.0))
    assert pair.shape == (2, 1, B, C)
    assert torch.equal(pair[1], torch.where(s, 3.0, 7.0))


@pytest.mark.parametrize("name", list_losses())
def test_a_config_is_bit_identical_alone_and_inside_a_batched_call(name: str) -> None:
    """Config m of an M = 3 call (own rows, own observed) equals that config called alone, bit for bit:
    values, logit gradients and loss-parameter gradients (the trainer's job-id resume relies on it)."""
    gen = torch.Generator().manual_seed(7)
    n, c, b, m = 40, 20, 8, 3
    obs = torch.zeros(n, c)
    obs[torch.arange(n), torch.randint(0, c, (n,), generator=gen)] = 1
    idx = torch.stack([torch.randperm(n, generator=gen)[:b] for _ in range(m)])
    z = torch.randn(m, b, c, generator=gen) * 3

    def run(lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        loss = build_batched_loss(name, [{}] * (hi - lo), num_classes=c, num_train=n, dataset="voc")
        loss.init_state(obs, list(range(lo, hi)))
        attach_test_pseudo(loss, n, c)
        loss.start_epoch(3, 6)
        params = [p for group in loss.param_groups(1.0) for p in group["params"]]
        logits = z[lo:hi].clone().requires_grad_(True)
        values = loss(logits, obs[idx[lo:hi]] > 0.5, idx[lo:hi])
        values.sum().backward()
        return values.detach(), logits.grad, [p.grad for p in params]

    v_all, dz_all, dp_all = run(0, m)
    for k in range(m):
        v, dz, dp = run(k, k + 1)
        assert torch.equal(v[0], v_all[k]) and torch.equal(dz[0], dz_all[k]), (name, k)
        for a, b_ in zip(dp, dp_all):
            assert torch.equal(a[0], b_[k]), (name, k)


@pytest.mark.parametrize("name", list_losses())
def test_value_and_grad_equals_forward_and_autograd(name: str) -> None:
    """For losses with a fused gradient: the same values (bitwise) and gradients (logits and loss
    parameters) as forward + backward with a unit upstream gradient per config."""
    from spmlbench.losses import batched_class

    if not batched_class(name).fused_grad:
        pytest.skip(f"{name}: no fused gradient (trained through autograd)")
    gen = torch.Generator().manual_seed(11)
    n, c, b, m = 40, 20, 8, 3
    obs = torch.zeros(n, c)
    obs[torch.arange(n), torch.randint(0, c, (n,), generator=gen)] = 1
    for shared in (True, False):
        idx = torch.randperm(n, generator=gen)[:b] if shared else \
            torch.stack([torch.randperm(n, generator=gen)[:b] for _ in range(m)])
        z = torch.randn(m, b, c, generator=gen) * 3
        z[0, 0, 0], z[1, 1, 1] = 40.0, -40.0

        def build() -> tuple[torch.nn.Module, list[torch.Tensor]]:
            loss = build_batched_loss(name, [{}] * m, num_classes=c, num_train=n, dataset="voc")
            loss.init_state(obs, list(range(m)))
            loss.start_epoch(4, 6)
            return loss, [p for group in loss.param_groups(1.0) for p in group["params"]]

        ref, ref_params = build()
        leaf = z.clone().requires_grad_(True)
        values = ref(leaf, obs[idx] > 0.5, idx)
        torch.autograd.backward([values], [torch.ones(m)])
        fused, fused_params = build()
        v, dz = fused.value_and_grad(z, obs[idx] > 0.5, idx)
        assert torch.equal(v, values.detach()), name
        torch.testing.assert_close(dz, leaf.grad, rtol=1e-6, atol=1e-9)
        for p, q in zip(fused_params, ref_params):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)


def test_value_and_grad_needs_a_fused_loss() -> None:
    from spmlbench.losses.base import BatchedLoss

    class Plain(type(build_batched_loss("an", [{}], num_classes=3))):  # type: ignore[misc]
        fused_grad = False

    loss = Plain(build_batched_loss("an", [{}], num_classes=3).hparams, num_classes=3)
    assert isinstance(loss, BatchedLoss)
    with pytest.raises(TypeError, match="no fused gradient"):
        loss.value_and_grad(torch.zeros(1, 2, 3), torch.zeros(2, 3))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list_losses())
def test_value_and_grad_does_not_synchronise(name: str, device: str) -> None:
    """The trainer's per-step call (per-config rows, bool observed), epoch after epoch; on CUDA it never waits
    for the device (a loss without a fused gradient trains through autograd: tests/test_losses_caching.py
    checks that step)."""
    from spmlbench.losses import batched_class

    if not batched_class(name).fused_grad:
        pytest.skip(f"{name}: no fused gradient (trained through autograd)")
    n, c, m = 12, 5, 2
    obs = torch.eye(c)[torch.arange(n) % c].to(device)
    loss = build_batched_loss(name, [{}] * m, num_classes=c, num_train=n, dataset="voc").to(device)
    loss.init_state(obs, [0, 1])
    z = torch.randn(m, 6, c, device=device)
    idx = torch.stack([torch.arange(6), torch.arange(6, 12)]).to(device)
    s = obs[idx] > 0.5
    params = [p for group in loss.param_groups(1.0) for p in group["params"]]
    for epoch in (1, 3):
        loss.start_epoch(epoch, 3)
        loss.value_and_grad(z, s, idx)  # first step of the epoch fills the caches
        with no_host_sync(device):
            for _ in range(2):
                for p in params:
                    p.grad = None
                values, grad = loss.value_and_grad(z, s, idx)
        assert values.shape == (m,) and grad.shape == z.shape and torch.isfinite(grad).all()
