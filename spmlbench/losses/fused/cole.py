"""Fused value-and-gradient forms of the Cole et al. 2021 losses (optional accelerators).

The formulas are in ``spmlbench/losses/builtin/{bce,an,an_ls,wan,epr,role}.py``; these classes compute
the same values with their exact logit derivative (``fused_grad``): BCE, AN, AN-LS, WAN and EPR through
:func:`~spmlbench.losses.base.entry_mean`, ROLE (which also differentiates its label-logit matrix ``G``)
through :func:`role_value` / :func:`role_grads`, shared by its autograd node :class:`ROLEValue` and
:meth:`ROLEFusedLoss.value_and_grad`. ``1 - p`` is computed as ``sigmoid(-z)`` (no cancellation near
p = 1). With ``p = sigmoid(x)``, ``d/dx log(p + eps) = p (1 - p) / (p + eps)``, the building block of
every derivative below. ``tests/test_losses_plain_vs_fused.py`` checks each against its formula.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.losses.base import EntryLoss, signs
from spmlbench.losses.builtin.an import ANParams
from spmlbench.losses.builtin.an_ls import ANLSParams
from spmlbench.losses.builtin.bce import BCEParams
from spmlbench.losses.builtin.epr import EPRParams
from spmlbench.losses.builtin.role import ROLELoss
from spmlbench.losses.builtin.wan import WANParams


class BCELoss(EntryLoss):
    """[bce] BCE on the clean labels (the trainer passes clean labels as ``observed``)."""


    hparams_cls = BCEParams


    def entries(self, z: Tensor, need_grad: bool, s: Tensor) -> tuple[Tensor, Tensor | None]:
        """``nlog(sigmoid(t z))`` (t = +1 where s, -1 where not) and, if ``need_grad``, its derivative in z:

        ``-t (1 - p) p / (p + eps)`` with ``p = sigmoid(t z)``, ``1 - p = sigmoid(-t z)``.
        """
        t = signs(self, s, z, (1.0, -1.0))
        tz = z * t  # [t z, -t z]: exact sign flips
        p = torch.sigmoid(tz[0])
        p_eps = p + self.col("eps", z)
        mat = -torch.log(p_eps)  # nlog(p, eps)
        if not need_grad:
            return mat, None
        return mat, torch.sigmoid(tz[1]).mul_(p).div_(p_eps).mul_(t[1])


class ANLoss(BCELoss):
    """[an] s = 1: nlog(p); s = 0: nlog(1 - p)."""

    hparams_cls = ANParams


class ANLSLoss(EntryLoss):
    """[an_ls] AN with label smoothing ``ls`` on both sides."""


    hparams_cls = ANLSParams


    def entries(self, z: Tensor, need_grad: bool, s: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-entry loss and, if ``need_grad``, its derivative in z.

        With ``t`` = +1 where s, -1 where not, ``x0 = sigmoid(t z)``, ``x1 = sigmoid(-t z) = 1 - x0``:
        value ``w0 log(x0 + eps) + w1 log(x1 + eps)``, ``(w0, w1) = (-(1 - ls), -ls)``; derivative
        ``t x0 x1 (w0 / (x0 + eps) - w1 / (x1 + eps))``.
        """
        # logits [z, -z] where s, [-z, z] where not: logs [nlog(p), nlog(1-p)] / [nlog(1-p), nlog(p)],
        # weighted (1 - ls, ls) and summed (the minus sign of nlog folded into the weights)
        w = self.const("an_ls.-w", [-(1 - v) for v in self.values("ls_coef")] + [-v for v in self.values("ls_coef")],
                       z.dtype, z.device, (2, -1, 1, 1))
        t = signs(self, s, z, (1.0, -1.0))
        sig = torch.sigmoid(z * t)  # [x0, x1]
        shifted = sig + self.col("eps", z)
        mat = (torch.log(shifted) * w).sum(dim=0)
        if not need_grad:
            return mat, None
        ratio = (w / shifted).unbind(0)
        return mat, torch.sub(ratio[0], ratio[1]).mul_(sig[0]).mul_(sig[1]).mul_(t[0])


class WANLoss(EntryLoss):
    """[wan] s = 1: nlog(p); s = 0: nlog(1 - p) / (C - 1)."""


    hparams_cls = WANParams

    def __init__(self, hparams: Any, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)
        if num_classes < 2:
            raise ConfigError(f"wan: num_classes={num_classes}: must be >= 2 (negatives are weighted 1/(C-1))")


    def entries(self, z: Tensor, need_grad: bool, s: Tensor) -> tuple[Tensor, Tensor | None]:
        """``nlog(sigmoid(t z)) / d`` (t = +1, d = 1 where s; t = -1, d = C - 1 where not) and, if
        ``need_grad``, its derivative in z: ``-(t / d) (1 - p) p / (p + eps)``, ``p = sigmoid(t z)``."""
        # [t, -t, -d, -t / d] in one select; the minus sign of nlog in the divisor -d
        c = self.num_classes
        t = signs(self, s, z, (1.0, -1.0, -1.0, -1.0), (-1.0, 1.0, 1.0 - c, 1.0 / (c - 1)))
        tz = z * t[:2]  # [t z, -t z]: exact sign flips
        p = torch.sigmoid(tz[0])
        p_eps = p + self.col("eps", z)
        mat = torch.log(p_eps) / t[2]
        if not need_grad:
            return mat, None
        return mat, torch.sigmoid(tz[1]).mul_(p).div_(p_eps).mul_(t[3])


class EPRLoss(EntryLoss):
    """[epr] s = 1: nlog(p); s = 0: 0; plus ``(mean_b sum_c p - k)^2 / C^2``."""


    hparams_cls = EPRParams


    def entries(self, z: Tensor, need_grad: bool, s: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """Per-entry ``s nlog(p)``, its derivative (times B C, the regulariser's included) and the regulariser.

        With ``dev = sum_bc p / B - k``: regulariser ``dev^2 / C^2``; ``B C`` times the derivative of
        the value in z is ``p (1 - p) (2 dev / C - s / (p + eps))`` (``1 - p = sigmoid(-z)``).
        """
        b, c = z.shape[-2:]
        p = torch.sigmoid(z)  # one sigmoid shared by both terms
        p_eps = p + self.col("eps", z)
        neg_s = signs(self, s, z, (-1.0,), (0.0,))
        mat = torch.log(p_eps) * neg_s  # s nlog(p)
        negk = self.const("epr.-k", [-v for v in self.values("expected_num_pos")], z.dtype, z.device, (-1,))
        dev = torch.add(negk, p.sum(dim=(-2, -1)), alpha=1.0 / b)
        reg = torch.mul(dev, dev).mul_(1.0 / c**2)
        if not need_grad:
            return mat, None, reg
        inner = torch.add(neg_s / p_eps, dev.view(-1, 1, 1), alpha=2.0 / c)
        return mat, torch.sigmoid(-z).mul_(p).mul_(inner), reg


class ROLEFusedLoss(ROLELoss):
    """[role] ROLE with values and logit/``G`` derivatives in one node (:class:`ROLEValue`), and without
    autograd through :meth:`value_and_grad`."""

    fused_grad = True

    def _inputs(self, logits: Tensor, observed: Tensor, index: Tensor | None) -> tuple[Tensor, RoleArgs]:
        """Checked logits ``z`` and the constant arguments ``(rows, s, eps, -k, sign)`` of :func:`role_value`."""
        z, s = self.check_inputs(logits, observed, index)
        self.check_ready()
        assert index is not None
        m = self.num_configs
        rows = (self.const("role.configs", range(m), torch.long, self.G.device, (-1, 1)), index.to(self.G.device))
        negk = self.const("role.-k", [-k for k in self.values("expected_num_pos")], z.dtype, z.device, (-1,))
        sign = self.const("role.sign", (1.0, -1.0), z.dtype, z.device, (2, 1, 1, 1, 1))
        return z, (rows, s, self.col("eps", z), negk, sign)

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        z, args = self._inputs(logits, observed, index)
        return ROLEValue.apply(z, self.G, *args)

    def value_and_grad(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Values (M,) and their summed logit derivative (M, B, C) without autograd; the derivative in
        ``G`` is accumulated into ``G.grad`` (when ``G`` requires grad), as ``forward`` + ``backward``
        with a unit upstream gradient would: the same numbers (:class:`ROLEValue` runs the same code)."""
        with torch.no_grad():
            z, (rows, s, eps, negk, sign) = self._inputs(logits, observed, index)
            value, saved = role_value(z, gather_rows(self.G, rows), s, eps, negk, sign)
            dz, dg = role_grads(saved)
            if self.G.requires_grad:
                if self.G.grad is None:
                    self.G.grad = self._fresh_grad(dg, rows)
                else:  # what autograd's gradient accumulation does
                    self.G.grad.add_(scatter_rows(dg, rows, self.G.shape, self.G.dtype))
        return value, dz

    def _fresh_grad(self, dg: Tensor, rows: tuple[Tensor, Tensor]) -> Tensor:
        """``G``'s gradient for ``dg`` in ``G[rows]`` (zero elsewhere) in a buffer reused from call to call.

        A step touches ``M x B`` of G's ``M x N`` rows, so instead of a new zero matrix per step only
        the rows the previous call wrote are zeroed again. The tensor handed out as ``G.grad`` is
        therefore overwritten by the next call that finds ``G.grad`` cleared (the trainer clears it
        every step; do not keep a reference to it across steps).
        """
        held = self.__dict__.get("_grad_buf")
        if held is None or held[0].shape != self.G.shape or held[0].dtype != self.G.dtype \
                or held[0].device != self.G.device:
            buf = torch.zeros_like(self.G, memory_format=torch.contiguous_format)
        else:
            buf, last = held
            if last[1].dim() == 1:
                buf.index_fill_(1, last[1], 0.0)
            else:
                buf.index_put_(last, torch.zeros((), dtype=buf.dtype, device=buf.device))
        if rows[1].dim() == 1:
            buf.index_add_(1, rows[1], dg.to(buf.dtype))
        else:
            buf.index_put_(rows, dg.to(buf.dtype), accumulate=True)
        self.__dict__["_grad_buf"] = (buf, (rows[0], rows[1].clone()))
        return buf


RoleArgs = tuple[tuple[Tensor, Tensor], Tensor, Tensor, Tensor, Tensor]
RoleSaved = tuple[Tensor, Tensor, Tensor, Tensor]


def gather_rows(G: Tensor, rows: tuple[Tensor, Tensor]) -> Tensor:
    """``G[rows]`` (M, B, C) for ``rows`` = (config ids (M, 1), row ids (B,) or (M, B))."""
    return G.index_select(1, rows[1]) if rows[1].dim() == 1 else G[rows]


def scatter_rows(dg: Tensor, rows: tuple[Tensor, Tensor], shape: torch.Size, dtype: torch.dtype) -> Tensor:
    """The gradient in ``G`` (``shape``, ``dtype``) of a gradient ``dg`` (M, B, C) in ``G[rows]``: zero
    outside the rows, repeated rows add up."""
    d_g = torch.zeros(shape, dtype=dtype, device=dg.device)
    if rows[1].dim() == 1:
        d_g.index_add_(1, rows[1], dg.to(dtype))
    else:
        d_g.index_put_(rows, dg.to(dtype), accumulate=True)
    return d_g


def role_value(z: Tensor, g: Tensor, s: Tensor, eps: Tensor, negk: Tensor, sign: Tensor,
               weights: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, RoleSaved]:
    """ROLE's per-config value (M,) (formula: :class:`ROLEValue`) from logits ``z`` and label logits
    ``g = G[rows]`` (M, B, C), and the tensors :func:`role_grads` needs."""
    b, c = z.shape[-2:]
    sig = torch.sigmoid(torch.stack((z, g.to(z.dtype))) * sign)  # [[p, q], [1 - p, 1 - q]]
    shifted = sig + eps
    if weights is not None:
        sig_w = torch.sigmoid(torch.stack(weights) * sign)
    else:
        sig_w = sig
    w = sig_w.flip(1)  # weight of each log: [[q', p'], [1 - q', 1 - p']] ...
    w[0].add_(s)  # ... plus s on nlog(p), nlog(q)
    dev = torch.add(negk, sig[0].sum(dim=(-2, -1)), alpha=1.0 / b)  # (2, M): mean_b sum_c p - k (p, q)
    # per config one contiguous row, reduced alike for any M (a config's value must not depend on
    # which other configs share the call: job-id resume relies on it)
    terms = (w * shifted.log()).movedim(2, 0).reshape(z.shape[0], -1)
    value = terms.sum(dim=1).mul_(-0.5 / (b * c))
    value.add_(torch.linalg.vecdot(dev, dev, dim=0), alpha=0.5 / c**2)
    return value, (sig, shifted, w, dev)


def role_grads(saved: RoleSaved, grad: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Derivatives ``(d/dz, d/dg)`` (M, B, C) of ``sum_m grad[m] value[m]`` (``grad`` None: all ones)
    from :func:`role_value`'s saved tensors (cross targets constant)."""
    sig, shifted, w, dev = saved
    b, c = sig.shape[-2:]
    # d value / d logit = -0.5/(BC) * x(1-x) * (w+/(x+eps) - w-/(1-x+eps) - 2 dev / C) per config
    ratio = (w / shifted).unbind(0)
    inner = torch.sub(ratio[0], ratio[1]).sub_(dev.view(2, -1, 1, 1), alpha=2.0 / c)
    scale = -0.5 / (b * c) if grad is None else grad.view(-1, 1, 1).mul(-0.5 / (b * c))  # same numbers for ones
    dx = sig.prod(dim=0).mul_(inner).mul_(scale)
    dz, dg = dx.unbind(0)
    return dz, dg


class ROLEValue(torch.autograd.Function):
    """ROLE's per-config value (M,) in one autograd node, with a hand-written backward.

    ``apply(z, G, rows, s, eps, negk, sign, weights=None)``: logits ``z`` (M, B, C), the label-logit
    matrix ``G`` (M, N, C) read at ``G[rows]`` (``rows`` = (config ids (M, 1), row ids (B,) or
    (M, B))), observed mask ``s`` (1 or M, B, C) bool, ``eps`` (M, 1, 1), ``negk`` = -k (M,),
    ``sign`` = (+1, -1) shaped (2, 1, 1, 1, 1). With ``p = sigmoid(z)``, ``q = sigmoid(g)``,
    ``g = G[rows]``, per entry

        0.5 [s nlog(p) + s nlog(q)] + 0.5 [q' nlog(p) + (1 - q') nlog(1 - p) + p' nlog(q) + (1 - p') nlog(1 - q)]

    averaged over B x C, plus ``0.5 [(mean_b sum_c p - k)^2 + (mean_b sum_c q - k)^2] / C^2``.
    The cross targets ``p'``, ``q'`` are constants (detached ``p``, ``q``; ``1 - x`` is
    ``sigmoid(-logit)``). ``weights`` = (z', g') (M, B, C) takes the cross targets from other
    logits (a gradient check with fixed targets); None: from ``z`` and ``g`` themselves.
    The math is :func:`role_value` and :func:`role_grads` (shared with :meth:`ROLEFusedLoss.value_and_grad`).
    """

    @staticmethod
    def forward(ctx: Any, z: Tensor, G: Tensor, rows: tuple[Tensor, Tensor], s: Tensor, eps: Tensor,
                negk: Tensor, sign: Tensor, weights: tuple[Tensor, Tensor] | None = None) -> Tensor:
        value, saved = role_value(z, gather_rows(G, rows), s, eps, negk, sign, weights)
        ctx.save_for_backward(*saved)
        ctx.rows = rows
        ctx.g_meta = (G.shape, G.dtype)
        return value

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        if torch.is_grad_enabled():
            raise RuntimeError("role: the ROLE loss supports one backward pass only (no create_graph)")
        dz, dg = role_grads(ctx.saved_tensors, grad)
        d_g = scatter_rows(dg, ctx.rows, *ctx.g_meta) if ctx.needs_input_grad[1] else None
        return (dz if ctx.needs_input_grad[0] else None), d_g, None, None, None, None, None, None
