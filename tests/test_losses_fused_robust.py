"""Focal, ASL, Hill, SPLC as fused losses (``entry_mean``): values, hand-written logit gradients, ties.

The references below are the plain autograd forms of the published formulas (as the losses were
written before they were fused: ``where(s, z, -z)`` signs, ``exp(g logsigmoid)`` powers, ASL's
clamps with its weight detached). The fused forward must give the same values bit for bit and
``value_and_grad`` / ``backward`` the same logit gradients up to rounding; ``gradcheck`` checks the
hand-derived derivative against finite differences independently of any reference.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import gradcheck

from spmlbench.losses import build_batched_loss, resolve_hparams
from spmlbench.losses.fused.robust import ASLLoss

M, B, C = 3, 4, 5
ROBUST = ("focal", "asl", "hill", "splc")

CONFIGS: dict[str, list[dict[str, Any]]] = {
    "focal": [{}, {"gamma": 0.5}, {"gamma": 0.0, "eps": 1e-3}],
    "asl": [{}, {"gamma_pos": 1.0, "clip": 0.0}, {"gamma_neg": 2.0, "clip": 0.2, "eps": 1e-4}],
    "hill": [{}, {"lamb": 2.0, "margin": 0.5}, {"gamma": 0.0}],
    "splc": [{}, {"change_epoch": 3, "tau": 0.5}, {"margin": 0.0, "gamma": 1.0}],
}


def _col(values: list[float], like: Tensor) -> Tensor:
    return torch.tensor(values, dtype=like.dtype).view(-1, 1, 1)


def _hp(name: str, key: str) -> list[float]:
    return [getattr(resolve_hparams(name, None, **c), key) for c in CONFIGS[name]]


def _focal_margin(y: Tensor, g: Tensor) -> Tensor:
    return torch.exp(g * F.logsigmoid(-y)) * -F.logsigmoid(y)


def reference(name: str, z: Tensor, s: Tensor, epoch: int = 1) -> Tensor:
    """The loss (M,) written with plain autograd ops; ``s`` bool (1 or M, B, C)."""
    col = lambda key: _col(_hp(name, key), z)  # noqa: E731
    if name == "focal":
        t = torch.where(s, z, -z)
        mat = torch.exp(col("gamma") * F.logsigmoid(-t)) * -torch.log(torch.sigmoid(t) + col("eps"))
    elif name == "asl":
        x = torch.clamp(torch.sigmoid(torch.where(s, z, -z)) + torch.where(s, 0.0, col("clip")), max=1.0)
        w = -torch.pow(1 - x, torch.where(s, col("gamma_pos"), col("gamma_neg"))).detach()
        mat = w * torch.log(torch.clamp(x, min=col("eps")))
    elif name == "hill":
        p = torch.sigmoid(z)
        mat = torch.where(s, _focal_margin(z - col("margin"), col("gamma")), (col("lamb") - p) * p * p)
    else:
        switched = torch.tensor([epoch >= c for c in _hp(name, "change_epoch")]).view(-1, 1, 1)
        up = s | ((torch.sigmoid(z) > col("tau")) & switched).detach()
        y = torch.where(up, z, -z) - torch.where(s, col("margin"), 0.0)
        mat = _focal_margin(y, col("gamma"))
    return mat.mean(dim=(-2, -1))


def _logits(seed: int, dtype: torch.dtype = torch.float64, scale: float = 3.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(M, B, C, generator=g, dtype=torch.float64) * scale
    z[0, 0, 0], z[1, 1, 1], z[2, 0, 1] = 30.0, -30.0, 17.0  # saturated sigmoids
    return z.to(dtype)


def _observed(seed: int, per_config: bool) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    s = torch.rand((M, B, C) if per_config else (B, C), generator=g) < 0.35
    s[..., 0, 0] = True  # z = 30 observed, z = -30 at [1, 1, 1] observed in per-config batches
    if per_config:
        s[1, 1, 1] = True
    return s


def _build(name: str, epoch: int, dtype: torch.dtype) -> Any:
    loss = build_batched_loss(name, CONFIGS[name], num_classes=C).to(dtype=dtype)
    loss.start_epoch(epoch, 5)
    return loss


def _rel_err(a: Tensor, b: Tensor, floor: float = 1e-3 / (B * C)) -> float:
    """Largest ``|a - b| / (|b| + floor)`` (gradients are O(1 / (B C)))."""
    return float(((a.double() - b.double()).abs() / (b.double().abs() + floor)).max())


def test_the_robust_losses_declare_a_fused_gradient() -> None:
    for name in ROBUST:
        assert build_batched_loss(name, CONFIGS[name], num_classes=C).fused_grad


@pytest.mark.parametrize("name", ROBUST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("per_config", [False, True])
def test_value_and_grad_equals_forward_backward_and_the_reference(name: str, dtype: torch.dtype,
                                                                  per_config: bool) -> None:
    for epoch in (1, 2, 3):  # SPLC: no config switched, the first only, two of three
        loss = _build(name, epoch, dtype)
        z = _logits(10 + epoch, dtype).requires_grad_(True)
        s = _observed(10 + epoch, per_config)
        s3 = s if per_config else s.unsqueeze(0)

        want = reference(name, z, s3, epoch)
        (want_dz,) = torch.autograd.grad(want.sum(), z)
        want = want.detach()
        # float32 also against the float64 gradient: autograd's float32 sigmoid backward, (1 - p) p,
        # loses digits where p is near 1 (the fused form takes 1 - p as sigmoid(-t)); ASL's clamp at
        # x = 1 is reached earlier in float32 (p rounds to 1)
        z64 = z.detach().double().requires_grad_(True)
        (true_dz,) = torch.autograd.grad(reference(name, z64, s3, epoch).sum(), z64)
        got = loss(z, s)
        (got_dz,) = torch.autograd.grad(got.sum(), z)
        values, dz = loss.value_and_grad(z.detach(), s.float())  # float 0/1 observed: the same mask

        assert torch.equal(got.detach(), want)  # bitwise: the published formula's rounding
        assert torch.equal(values, want)
        assert torch.equal(dz, got_dz)  # the same derivative through autograd's node and without it
        if dtype == torch.float64:
            assert _rel_err(dz, want_dz) <= 1e-12
        else:  # the equivalence check's metric (1e-3 floor), and 1e-4 of the float64 gradient
            assert _rel_err(dz, want_dz, 1e-3) <= 1e-5 and _rel_err(dz, true_dz) <= 1e-4


@pytest.mark.parametrize("name", ROBUST)
def test_value_and_grad_per_config_batches_match_each_config_alone(name: str) -> None:
    """At the trainer's B x C = 8 x 20 (a config's block is whole vector chunks of torch's elementwise
    kernels; with ragged blocks, e.g. 4 x 5, a kernel may round one element differently alone)."""
    b, c = 8, 20
    g = torch.Generator().manual_seed(20)
    z = torch.randn(M, b, c, generator=g) * 3
    z[0, 0, 0], z[1, 1, 1] = 30.0, -30.0
    s = torch.rand(M, b, c, generator=g) < 0.3
    index = torch.arange(M * b).view(M, b)
    loss = build_batched_loss(name, CONFIGS[name], num_classes=c)
    loss.start_epoch(2, 5)
    values, dz = loss.value_and_grad(z, s, index)
    for m in range(M):
        alone = build_batched_loss(name, [CONFIGS[name][m]], num_classes=c)
        alone.start_epoch(2, 5)
        v, d = alone.value_and_grad(z[m : m + 1], s[m], index[m])
        assert torch.equal(v[0], values[m]) and torch.equal(d[0], dz[m])


class _FrozenWeightASL(ASLLoss):
    """ASL with its (detached) focusing weight frozen at a reference point: a smooth function of z."""

    frozen: Tensor | None = None

    def _weight(self, one_minus_x: Tensor, s: Tensor, z: Tensor) -> Tensor:
        if self.frozen is None:
            self.frozen = super()._weight(one_minus_x, s, z)
        return self.frozen


def _smooth_logits(seed: int) -> Tensor:
    """float64 logits in (-6, 6) away from SPLC's switch (p = tau) and ASL's clamp at x = 1."""
    z = _logits(seed, scale=2.0).clamp(-6.0, 6.0)
    return z.requires_grad_(True)


@pytest.mark.parametrize("name", ["focal", "hill", "splc"])
@pytest.mark.parametrize("per_config", [False, True])
def test_gradcheck_through_entry_mean(name: str, per_config: bool) -> None:
    loss = _build(name, 2, torch.float64)  # SPLC: the first and third configs switched
    s = _observed(30, per_config)
    assert gradcheck(lambda x: loss(x, s), (_smooth_logits(30),))


@pytest.mark.parametrize("per_config", [False, True])
def test_asl_gradcheck_with_the_weight_constant(per_config: bool) -> None:
    loss = _FrozenWeightASL([resolve_hparams("asl", None, **c) for c in CONFIGS["asl"]], num_classes=C).double()
    z, s = _smooth_logits(31), _observed(31, per_config)
    real = build_batched_loss("asl", CONFIGS["asl"], num_classes=C).double()
    assert torch.equal(loss(z, s), real(z, s))  # frozen at z: the real weight
    assert gradcheck(lambda x: loss(x, s), (z,))
    # entries on the flat side of the clamp at 1 (clip 0.2: sigmoid(-z) + 0.2 > 1) get no gradient
    (dz,) = torch.autograd.grad(real(z, s).sum(), z)
    flat = ~s.expand(M, B, C)[2] & (torch.sigmoid(-z.detach()[2]) + 0.2 > 1)
    assert flat.any() and (dz[2][flat] == 0).all()


def _sigmoid_hitting(target: float, start: float) -> float:
    """A float64 z near ``start`` with ``sigmoid(z) == target`` exactly (searched over neighbouring floats)."""
    z = torch.tensor(start, dtype=torch.float64)
    for _ in range(10000):
        p = float(torch.sigmoid(z))
        if p == target:
            return float(z)
        z = torch.nextafter(z, torch.tensor(math.inf if p < target else -math.inf, dtype=torch.float64))
    raise AssertionError(f"no z with sigmoid(z) == {target}")


TORCH_2_13 = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) < (2, 14)


# Observed on torch 2.13.0+cpu: autograd passes clamp's full gradient at its bounds there, none at the upper
# bound and half at a tensor lower bound from 2.14; the fused ASL gradient follows 2.14 on every version.
@pytest.mark.skipif(TORCH_2_13, reason="torch < 2.14: autograd's gradient of clamp at its bounds differs")
def test_asl_clamp_ties_follow_autograd() -> None:
    """x == 1 (the clamp at 1 passes no gradient at its bound) and x == eps (half the gradient)."""
    z_tie = -_sigmoid_hitting(0.75, math.log(3.0))  # unobserved: sigmoid(-z) = 0.75, + clip 0.25 == 1
    z_eps = -8.0
    eps = float(torch.sigmoid(torch.tensor(z_eps, dtype=torch.float64)))  # observed: x == eps exactly
    configs = [{"clip": 0.25, "gamma_neg": 0.0}, {"eps": eps, "gamma_pos": 1.0}]
    loss = build_batched_loss("asl", configs, num_classes=3).double()
    z = torch.tensor([[[z_tie, 40.0, 0.3]], [[z_eps, 40.0, -1.0]]], dtype=torch.float64, requires_grad=True)
    s = torch.tensor([[[False, True, True]], [[True, True, False]]])
    values, dz = loss.value_and_grad(z.detach(), s)

    hp = [resolve_hparams("asl", None, **c) for c in configs]
    col = lambda key: _col([getattr(h, key) for h in hp], z)  # noqa: E731
    x = torch.clamp(torch.sigmoid(torch.where(s, z, -z)) + torch.where(s, 0.0, col("clip")), max=1.0)
    w = -torch.pow(1 - x, torch.where(s, col("gamma_pos"), col("gamma_neg"))).detach()
    want = (w * torch.log(torch.clamp(x, min=col("eps")))).mean(dim=(-2, -1))
    (want_dz,) = torch.autograd.grad(want.sum(), z)
    assert x[0, 0, 0] == 1.0 and x[0, 0, 1] == 1.0 and x[1, 0, 1] == 1.0 and x[1, 0, 0] == eps
    assert torch.equal(values, want.detach())
    assert dz[0, 0, 0] == 0 and dz[0, 0, 1] == 0 and dz[1, 0, 1] == 0  # x == 1: w = -1 (gamma 0) yet no gradient
    p = eps  # x == eps: half of w * (1-p) p / x, w = -(1-p)^1, / (B C) = 3
    assert float(dz[1, 0, 0]) == pytest.approx(0.5 * -(1 - p) * (1 - p) * p / eps / 3, rel=1e-12)
    assert torch.allclose(dz, want_dz, rtol=1e-12, atol=0)


def test_focal_gradient_by_hand() -> None:
    """One positive entry z = 0, gamma 2, eps 1e-5 (the default): d/dz (1-p)^2 (-log(p + eps)) at p = 1/2."""
    loss = build_batched_loss("focal", [{}], num_classes=1).double()
    _, dz = loss.value_and_grad(torch.zeros(1, 1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.bool))
    p, eps = 0.5, 1e-5
    want = -2 * (1 - p) * p * (1 - p) ** 1 * -math.log(p + eps) - (1 - p) ** 2 * p * (1 - p) / (p + eps)
    assert float(dz) == pytest.approx(want, rel=1e-12)  # = -0.1732818 - 0.1249975


def test_hill_negative_gradient_by_hand() -> None:
    """Unobserved entry: d/dz (lamb - p) p^2 = (2 lamb p - 3 p^2) p (1-p); zero at p = 2 lamb / 3."""
    loss = build_batched_loss("hill", [{"lamb": 1.2}], num_classes=2).double()
    z = torch.tensor([[[0.0, math.log(4.0)]]], dtype=torch.float64)  # p = 1/2 and p = 0.8 = 2 lamb / 3
    _, dz = loss.value_and_grad(z, torch.zeros(1, 2, dtype=torch.bool))
    assert float(dz[0, 0, 0]) == pytest.approx((2.4 * 0.5 - 0.75) * 0.25 / 2, rel=1e-12)
    assert abs(float(dz[0, 0, 1])) < 1e-16


def _grad_of(fn: Callable[[Tensor], Tensor], z: Tensor) -> Tensor:
    zz = z.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(zz).sum(), zz)
    return g


def test_splc_switch_is_piecewise_constant() -> None:
    """Across the switch p = tau the gradient jumps from the negative's to the pseudo positive's."""
    loss = build_batched_loss("splc", [{"tau": 0.5, "margin": 0.0, "gamma": 0.0}], num_classes=2).double()
    loss.start_epoch(2, 5)
    s = torch.zeros(1, 2, dtype=torch.bool)
    z = torch.tensor([[[-1e-3, 1e-3]]], dtype=torch.float64)  # p just below / above tau
    _, dz = loss.value_and_grad(z, s)
    p = torch.sigmoid(z)[0, 0]
    # gamma 0: negative -log(1-p) -> d = p; pseudo positive -log p -> d = -(1-p); / (B C) = 2
    assert torch.allclose(dz[0, 0], torch.stack([p[0], -(1 - p[1])]) / 2, rtol=1e-12, atol=0)
    assert torch.equal(dz, _grad_of(lambda x: loss(x, s), z))
