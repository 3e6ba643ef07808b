"""The fused per-entry losses (``entry_mean``): hand-written logit gradients against finite differences.

GR's k and v are computed from the detached p (constants for the gradient), so its check holds them
fixed at the values of a reference point; EM, EM-APL and LL need no such care (LL's selection is
piecewise constant: the logits keep every loss away from the k-th largest one and from the softplus
threshold).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor
from torch.autograd import gradcheck

from spmlbench.losses import build_batched_loss
from spmlbench.losses.base import entry_mean
from spmlbench.losses.fused.gr import GRLossBatched

M, B, C = 3, 4, 5


def _logits(seed: int, scale: float = 2.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(M, B, C, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


def _observed(seed: int, per_config: bool = False) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (M, B, C) if per_config else (B, C)
    return (torch.rand(shape, generator=g) < 0.3).double()


def test_entry_mean_cubic_gradient_and_value() -> None:
    def cube(z: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
        return z**3, (3 * z**2 if need_grad else None)

    loss = build_batched_loss("em", [{}] * M, num_classes=C)
    z = _logits(0)
    assert gradcheck(lambda x: entry_mean(loss, x, cube), (z,))
    want = (z.detach() ** 3).mean(dim=(-2, -1))
    assert torch.equal(entry_mean(loss, z, cube).detach(), want)  # the mean: sum / (B C), bitwise
    with torch.no_grad():
        assert torch.equal(entry_mean(loss, z, cube), want)


def test_entry_mean_refuses_double_backward() -> None:
    loss = build_batched_loss("em", [{}] * M, num_classes=C)
    z = _logits(1)
    out = loss(z, _observed(1)).sum()
    (g,) = torch.autograd.grad(out, z, create_graph=False)
    assert g.shape == z.shape
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss(z, _observed(1)).sum(), z, create_graph=True)


class _FrozenKV(GRLossBatched):
    """GR with k, v frozen at a reference p: the loss is then a smooth function of z for gradcheck."""

    def freeze(self, p0: Tensor) -> None:
        self.k0, self.v0 = super()._k(p0, 2), super()._v(p0, 2)

    def _k(self, p: Tensor, dims: int) -> Tensor:
        return self.k0

    def _v(self, p: Tensor, dims: int) -> Tensor:
        return self.v0


GR_CONFIGS: list[list[dict[str, Any]]] = [
    [{}, {"q2": 0.5, "q3": 1.5, "lag": False, "linear_init": 1}, {"use_k": False, "use_v": False}],
    [{"q2": 0.0, "q3": 0.0}, {"q2": 0.0, "q3": 2.0, "use_v": False}, {"q2": 2.0, "q3": 0.0, "use_k": False}],
]


@pytest.mark.parametrize("configs", GR_CONFIGS)
@pytest.mark.parametrize("per_config", [False, True])
def test_gr_gradient_with_k_v_constant(configs: list[dict[str, Any]], per_config: bool) -> None:
    from spmlbench.losses import resolve_hparams

    loss = _FrozenKV([resolve_hparams("gr", None, **c) for c in configs], num_classes=C)
    loss.start_epoch(4, 10)
    z = _logits(2, scale=3.0)
    loss.freeze(torch.sigmoid(z.detach()))
    s = _observed(2, per_config)
    assert gradcheck(lambda x: loss(x, s), (z,))
    # the frozen k, v are the ones the real loss uses at z: same value
    real = build_batched_loss("gr", configs, num_classes=C)
    real.start_epoch(4, 10)
    assert torch.allclose(real(z, s), loss(z, s), rtol=1e-14, atol=0)


def test_gr_switches_off_give_k_zero_v_one_exactly() -> None:
    loss = build_batched_loss("gr", [{"use_k": False, "use_v": False}, {}], num_classes=C)
    loss.start_epoch(5, 8)
    p = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    assert loss.k(p)[0].tolist() == [0.0, 0.0, 0.0] and loss.v(p)[0].tolist() == [1.0, 1.0, 1.0]
    assert loss.k(p)[1].tolist() == pytest.approx([1 / (1 + 2.718281828459045 ** (2 - x)) for x in (0.0, 0.3, 1.0)])


@pytest.mark.parametrize("per_config", [False, True])
def test_em_gradient(per_config: bool) -> None:
    loss = build_batched_loss("em", [{}, {"alpha": 0.5}, {"alpha": 0.01, "eps": 1e-3}], num_classes=C)
    s = _observed(3, per_config)
    assert gradcheck(lambda x: loss(x, s), (_logits(3, scale=4.0),))


@pytest.mark.parametrize("per_config", [False, True])
def test_em_apl_gradient_with_pseudo_labels(per_config: bool) -> None:
    n = 10
    loss = build_batched_loss("em_apl", [{}, {"beta": 0.3}, {"alpha": 0.3}], num_classes=C, num_train=n).double()
    loss.init_state(torch.zeros(n, C))
    g = torch.Generator().manual_seed(4)
    loss.pseudo.copy_(torch.rand(M, n, C, generator=g) < 0.4)
    loss.target.copy_(torch.rand(M, n, C, generator=g, dtype=torch.float64))
    index = torch.stack([torch.randperm(n, generator=g)[:B] for _ in range(M)]) if per_config else torch.arange(2, 2 + B)
    s = _observed(4, per_config)
    assert gradcheck(lambda x: loss(x, s, index), (_logits(4, scale=3.0),))


@pytest.mark.parametrize("name", ["ll_r", "ll_ct", "ll_cp"])
@pytest.mark.parametrize("epoch", [1, 3])
def test_ll_gradient(name: str, epoch: int) -> None:
    kw: dict[str, Any] = {"num_train": 10} if name == "ll_cp" else {}
    loss = build_batched_loss(name, [{"delta_rel": 10.0}, {"delta_rel": 20.0}, {"delta_rel": 5.0}], num_classes=C, **kw)
    loss.double()
    loss.start_epoch(epoch, 5)
    # distinct logits well apart (steps of 0.37): no tie at the k-th loss within gradcheck's eps
    z = (torch.randperm(M * B * C, generator=torch.Generator().manual_seed(5)).double() * 0.37 - 11.0)
    z = z.view(M, B, C).requires_grad_(True)
    s = _observed(5)
    index = torch.arange(B)

    def f(x: Tensor) -> Tensor:
        if name == "ll_cp":
            loss.corrected.zero_()  # LL-Cp remembers its flips: evaluate each point from the same state
        return loss(x, s, index)

    assert gradcheck(f, (z,))
