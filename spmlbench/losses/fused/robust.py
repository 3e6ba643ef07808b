"""Fused value-and-gradient forms of Focal, ASL, Hill and SPLC on AN targets (optional accelerators).

The formulas are in ``spmlbench/losses/builtin/{focal,asl,hill,splc}.py``:

- focal (Lin et al. 2017): on probabilities with ``nlog`` (eps 1e-5, the Cole-derived codebase of
  Zhou et al. 2022, whose focal numbers the report compares with); focusing weights keep their gradient.
- asl (Ben-Baruch et al. 2021): as the official code: ``log(clamp(x, min=eps))`` with eps 1e-8,
  probability shift ``clip`` on negatives, focusing weights detached.
- hill, splc (Zhang et al. 2021): on logits (``logsigmoid``, as the official code), focal-margin
  positives; weights keep their gradient (as the official code).

Powers ``x ** g`` of probabilities are computed as ``exp(g * logsigmoid(.))`` so that values and
gradients stay finite at p = 0 and 1.

Each loss is one fused step (:func:`entry_mean`): the per-entry value with the same operations as
the plain formula, and its hand-derived logit derivative (``p = sigmoid(t)``, ``1 - p`` as
``sigmoid(-t)``, ``d p / d t = p (1 - p)``, ``d logsigmoid(t) / d t = 1 - p``):

- focal, ``t = +-z``: ``d/dt [(1-p)^g (-log(p + eps))] = -(1-p)^g p ((1-p) / (p + eps) - g log(p + eps))``.
- focal margin ``f(y) = (1-q)^g (-log q)``, ``q = sigmoid(y)``: ``f'(y) = -(1-q)^g ((1-q) - g q log q)``.
- hill negatives ``(lamb - p) p^2``: ``p (2 lamb - 3 p) * p (1-p)``.
- asl (weight w detached): ``w p (1-p) / x`` times autograd's clamp factors: ``clamp(., max=1)``
  passes the gradient only below 1 (0 at the bound), ``clamp(., min=eps)`` (tensor bound) passes it
  above eps, half of it at ``x == eps`` (torch 2.x's tie rule), none below.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from spmlbench.losses.base import BatchedLoss, EntryLoss, signs, spow
from spmlbench.losses.builtin.asl import ASLParams
from spmlbench.losses.builtin.focal import FocalParams
from spmlbench.losses.builtin.hill import HillParams
from spmlbench.losses.builtin.splc import SPLCParams


class FocalLoss(EntryLoss):
    """[focal] positive ``(1-p)^g nlog(p)``; negative ``p^g nlog(1-p)``."""


    hparams_cls = FocalParams


    def entries(self, z: Tensor, need_grad: bool, s: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-entry loss (M, B, C) and, if ``need_grad``, its derivative in z (the focusing weight included)."""
        sg = signs(self, s, z)
        t = z * sg  # z where s, -z where not: neg(z) = pos(-z)
        nt = -t
        n_a = spow(F.logsigmoid(nt), self.col("gamma", z)).neg_()  # -(1-p)^g
        p = torch.sigmoid(t)
        p_eps = p + self.col("eps", z)
        log_p = torch.log(p_eps)
        mat = n_a * log_p  # bitwise (1-p)^g * nlog(p, eps): only the sign moved
        if not need_grad:
            return mat, None
        # (1-p) / (p+eps) - g log(p+eps)
        inner = torch.addcmul(torch.sigmoid(nt) / p_eps, _neg_col(self, "gamma", z), log_p)
        return mat, (n_a * p) * inner * sg


class ASLLoss(EntryLoss):
    """[asl] positive ``(1-p)^g+ (-log p)``; negative ``p_m^g- (-log(1-p_m))``, ``p_m = max(p-m, 0)``."""


    hparams_cls = ASLParams


    def entries(self, z: Tensor, need_grad: bool, s: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-entry loss (M, B, C) and, if ``need_grad``, its derivative in z with the weight constant.

        x = p where s, 1 - p_m = min(1 - p + clip, 1) where not (1 - p as sigmoid(-z)); the loss is
        w * log(max(x, eps)) with w = -(1 - x)^gamma (the minus sign of -log folded in), detached.
        """
        zero = self.const("zero", (0.0,), z.dtype, z.device, ())
        t = z * signs(self, s, z)
        p = torch.sigmoid(t)
        x = torch.clamp(p + torch.where(s, zero, self.col("clip", z)), max=1.0)
        one_minus_x = 1 - x
        w = self._weight(one_minus_x, s, z)
        eps = self.col("eps", z)
        x_eps = torch.clamp(x, min=eps)
        mat = w * torch.log(x_eps)
        if not need_grad:
            return mat, None
        # autograd's clamp factors, doubled: 2 [x < 1] * (1 if x > eps, 1/2 if x == eps, 0 below) =
        # sign(1 - x) * (1 + sign(x - eps)) (1 - x >= 0; x - eps == 0 only at x == eps)
        below_one = torch.sign(one_minus_x)
        gate = torch.addcmul(below_one, torch.sign(x - eps), below_one)
        dt = (p * torch.sigmoid(-t)) / x_eps * w * gate  # 2 w p (1-p) / x where the clamps pass
        return mat, dt * signs(self, s, z, (0.5,))  # d/dz = +-d/dt, the doubling undone

    def _weight(self, one_minus_x: Tensor, s: Tensor, z: Tensor) -> Tensor:
        """``-(1 - x)^gamma`` (gamma_pos where s, gamma_neg where not): the focusing weight with the minus
        sign of -log folded in; a constant for the gradient (detached, as the official code)."""
        return torch.pow(one_minus_x, torch.where(s, self.col("gamma_pos", z), self.col("gamma_neg", z))).neg_()


def _neg_col(loss: BatchedLoss, name: str, like: Tensor) -> Tensor:
    """``-hyperparameter`` as an (M, 1, 1) column (cached)."""
    return loss.const(("neg", name), [-v for v in loss.values(name)], like.dtype, like.device)


def focal_margin(y: Tensor, gamma: Tensor, neg_gamma: Tensor, need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``f(y) = (1 - q)^g * (-log q)``, ``q = sigmoid(y)``, on logits (y = z - margin for a focal-margin
    positive) and, if ``need_grad``, ``f'(y) = -(1 - q)^g ((1 - q) - g q log q)``; ``neg_gamma = -gamma``."""
    ny = -y
    n_a = spow(F.logsigmoid(ny), gamma).neg_()  # -(1-q)^g
    log_q = F.logsigmoid(y)
    val = n_a * log_q  # bitwise (1-q)^g * -log q: only the sign moved
    if not need_grad:
        return val, None
    return val, n_a * torch.addcmul(torch.sigmoid(ny), neg_gamma * torch.sigmoid(y), log_q)


class HillLoss(EntryLoss):
    """[hill] positive: focal margin; unobserved: ``(lamb - p) p^2``."""


    hparams_cls = HillParams


    def entries(self, z: Tensor, need_grad: bool, s: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-entry loss (M, B, C) and, if ``need_grad``, its derivative in z."""
        pos, dpos = focal_margin(z - self.col("margin", z), self.col("gamma", z), _neg_col(self, "gamma", z), need_grad)
        p = torch.sigmoid(z)
        mat = torch.where(s, pos, (self.col("lamb", z) - p) * p * p)
        if dpos is None:
            return mat, None
        two_lamb = self.const("2lamb", [2 * v for v in self.values("lamb")], z.dtype, z.device)
        dneg = (p * torch.add(two_lamb, p, alpha=-3)) * (p * torch.sigmoid(-z))  # p (2 lamb - 3p) * p (1-p)
        return mat, torch.where(s, dpos, dneg)


class SPLCLoss(EntryLoss):
    """[splc] focal-margin positives; from ``change_epoch`` unobserved p > tau count as positives."""


    hparams_cls = SPLCParams

    def switched(self, device: torch.device) -> Tensor:
        """(M, 1, 1) bool: whether each config has reached its ``change_epoch`` (cached per epoch)."""
        ck = ("switched", self.epoch, device)
        t = self._const_cache.get(ck)
        if t is None:
            flags = [self.epoch >= c for c in self.values("change_epoch")]
            t = torch.tensor(flags, dtype=torch.bool, device=device).view(-1, 1, 1)
            self._const_cache[ck] = t
        return t


    def entries(self, z: Tensor, need_grad: bool, s: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-entry loss (M, B, C) and, if ``need_grad``, its derivative in z (the switch is piecewise
        constant: no gradient through ``p > tau``).

        All three cases are ``f(y)`` of :func:`focal_margin`: y = z - margin (observed), z (pseudo
        positive), -z (negative).
        """
        up = s
        switched = [self.epoch >= c for c in self.values("change_epoch")]
        if any(switched):
            flip = torch.sigmoid(z) > self.col("tau", z)
            if not all(switched):
                flip &= self.switched(z.device)
            up = flip | s
        shift = torch.where(s, self.col("margin", z), self.const("zero", (0.0,), z.dtype, z.device, ()))
        sg = signs(self, up, z)
        mat, dy = focal_margin(z * sg - shift, self.col("gamma", z), _neg_col(self, "gamma", z), need_grad)
        return mat, (None if dy is None else dy * sg)
