"""Robust multi-label losses applied to AN targets: Focal, ASL, Hill, SPLC.

- focal (Lin et al. 2017): on probabilities with ``nlog`` (eps 1e-7, as in the GR code where
  these baselines are re-run); focusing weights keep their gradient (standard focal loss).
- asl (Ben-Baruch et al. 2021): as the official code: ``log(clamp(x, min=eps))`` with eps 1e-8,
  probability shift ``clip`` on negatives, focusing weights detached.
- hill, splc (Zhang et al. 2021): on logits (``logsigmoid``, as the official code), focal-margin
  positives; weights keep their gradient (as the official code).

Powers ``x ** g`` of probabilities are computed as ``exp(g * logsigmoid(.))`` so that values and
gradients stay finite at p = 0 and 1.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from spmlbench.losses.base import BatchedLoss, nlog, signs, spow
from spmlbench.losses.hparams import HParams


@dataclasses.dataclass(frozen=True)
class FocalParams(HParams):
    """Focal loss: ``gamma`` (2)."""

    loss = "focal"
    gamma: float = 2.0
    eps: float = 1e-7

    def check(self) -> None:
        self.nonnegative("gamma")
        self.positive("eps")


@dataclasses.dataclass(frozen=True)
class ASLParams(HParams):
    """Asymmetric loss: ``gamma_pos`` (0), ``gamma_neg`` (4), ``clip`` (0.05), ``eps`` (1e-8, log clamp)."""

    loss = "asl"
    gamma_pos: float = 0.0
    gamma_neg: float = 4.0
    clip: float = 0.05
    eps: float = 1e-8

    def check(self) -> None:
        self.nonnegative("gamma_pos", "gamma_neg")
        self.require("clip", 0.0 <= self.clip < 1.0, "in [0, 1)")
        self.positive("eps")


@dataclasses.dataclass(frozen=True)
class HillParams(HParams):
    """Hill: ``lamb`` (1.5), ``margin`` (1), ``gamma`` (2)."""

    loss = "hill"
    lamb: float = 1.5
    margin: float = 1.0
    gamma: float = 2.0

    def check(self) -> None:
        self.nonnegative("lamb", "margin", "gamma")


@dataclasses.dataclass(frozen=True)
class SPLCParams(HParams):
    """SPLC: ``tau`` (0.6), ``margin`` (1), ``gamma`` (2), ``change_epoch`` (2, 1-based)."""

    loss = "splc"
    tau: float = 0.6
    margin: float = 1.0
    gamma: float = 2.0
    change_epoch: int = 2

    def check(self) -> None:
        self.require("tau", 0.0 <= self.tau <= 1.0, "in [0, 1]")
        self.nonnegative("margin", "gamma")
        self.require("change_epoch", self.change_epoch >= 1, ">= 1 (1-based epoch)")


class FocalLoss(BatchedLoss):
    """[focal] positive ``(1-p)^g nlog(p)``; negative ``p^g nlog(1-p)``."""

    hparams_cls = FocalParams

    def loss_matrix(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        t = z * signs(self, s, z)  # z where s, -z where not: neg(z) = pos(-z)
        return spow(F.logsigmoid(-t), self.col("gamma", z)) * nlog(torch.sigmoid(t), self.col("eps", z))


class ASLLoss(BatchedLoss):
    """[asl] positive ``(1-p)^g+ (-log p)``; negative ``p_m^g- (-log(1-p_m))``, ``p_m = max(p-m, 0)``."""

    hparams_cls = ASLParams

    def loss_matrix(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        # x = p where s, 1 - p_m = min(1 - p + clip, 1) where not (1 - p as sigmoid(-z)): loss w * -log(max(x, eps))
        zero = self.const("zero", (0.0,), z.dtype, z.device, ())
        x = torch.clamp(torch.sigmoid(z * signs(self, s, z)) + torch.where(s, zero, self.col("clip", z)), max=1.0)
        with torch.no_grad():  # -(1 - x)^gamma, the minus sign of -log folded in
            w = torch.pow(1 - x, torch.where(s, self.col("gamma_pos", z), self.col("gamma_neg", z))).neg_()
        return w * torch.log(torch.clamp(x, min=self.col("eps", z)))


def focal_margin_positive(z: Tensor, margin: Tensor, gamma: Tensor) -> Tensor:
    """``(1 - p_m)^g * (-log p_m)`` with ``p_m = sigmoid(z - margin)``, on logits."""
    zm = z - margin
    return spow(F.logsigmoid(-zm), gamma) * -F.logsigmoid(zm)


class HillLoss(BatchedLoss):
    """[hill] positive: focal margin; unobserved: ``(lamb - p) p^2``."""

    hparams_cls = HillParams

    def loss_matrix(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        pos = focal_margin_positive(z, self.col("margin", z), self.col("gamma", z))
        p = torch.sigmoid(z)
        neg = (self.col("lamb", z) - p) * p * p
        return torch.where(s, pos, neg)


class SPLCLoss(BatchedLoss):
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

    def loss_matrix(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        # all three are f(y) = (1 - sigmoid(y))^g (-log sigmoid(y)) (focal_margin_positive with margin 0):
        # y = z - margin (observed), z (pseudo positive), -z (negative)
        up = s
        switched = [self.epoch >= c for c in self.values("change_epoch")]
        if any(switched):
            with torch.no_grad():
                flip = torch.sigmoid(z) > self.col("tau", z)
                if not all(switched):
                    flip &= self.switched(z.device)
                up = flip | s
        shift = torch.where(s, self.col("margin", z), self.const("zero", (0.0,), z.dtype, z.device, ()))
        y = z * signs(self, up, z) - shift
        return spow(F.logsigmoid(-y), self.col("gamma", z)) * -F.logsigmoid(y)
