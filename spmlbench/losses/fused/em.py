"""Fused value-and-gradient forms of EM and EM-APL (Zhou et al., ECCV 2022; optional accelerators).

The formulas are in ``spmlbench/losses/builtin/{em,em_apl}.py``; these classes evaluate the B x C mean
and its logit gradient in one fused step (``entry_mean``). EM-APL keeps its state (observed rows,
pseudo-label masks, soft targets, the end-of-epoch pseudo-labelling) in the built-in class.
"""

from __future__ import annotations

import torch
from torch import Tensor

from spmlbench.losses.base import EntryLoss, entry_mean
from spmlbench.losses.builtin import em_apl
from spmlbench.losses.builtin.em import EMParams


def em_entries(z: Tensor, need_grad: bool, s: Tensor, alpha: Tensor, eps: Tensor,
               soft: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
    """EM's per-entry loss (M, B, C) and, if ``need_grad``, its derivative in z.

    ``s``: observed -> ``nlog(p)``; else ``-alpha H(p) = alpha (p log(p+eps) + (1-p) log(1-p+eps))``.
    ``soft = (pseudo, t, -beta, 1)`` (EM-APL; ``1`` a 0-dim tensor): pseudo-labelled entries give
    ``beta (t nlog(p) + (1-t) nlog(1-p)) = -beta (t log(p+eps) + (1-t) log(1-p+eps))`` instead.
    Both are ``c (w1 log(p+eps) + w2 log(1-p+eps))``: ``(c, w1, w2) = (alpha, p, 1-p)`` or ``(-beta, t, 1-t)``.
    """
    p, pn = torch.sigmoid(z), torch.sigmoid(-z)  # pn = 1 - p, accurate near p = 1
    p_eps, pn_eps = p + eps, pn + eps
    lp, ln = torch.log(p_eps), torch.log(pn_eps)  # -nlog(p), -nlog(1-p)
    if soft is None:
        w1, w2, coef = p, pn, alpha
    else:
        pseudo, t, neg_beta, one = soft
        w1, w2, coef = torch.where(pseudo, t, p), torch.where(pseudo, one - t, pn), torch.where(pseudo, neg_beta, alpha)
    mat = torch.where(s, -lp, coef * (w1 * lp + w2 * ln))  # the reference's rounding (no fused multiply-add)
    if not need_grad:
        return mat, None
    # d/dz log(p+eps) = p(1-p)/(p+eps) = (1-p) qp, d/dz log(1-p+eps) = -p qn; the entropy's weights
    # p, 1-p add p(1-p) (lp - ln).
    qp, qn = p / p_eps, pn / pn_eps
    d_obs = -pn * qp
    if soft is None:
        dh = (p * pn) * ((lp - ln) + (qp - qn))
    else:
        dh = ((p * pn) * (lp - ln)).masked_fill_(pseudo, 0.0)
        dh = torch.addcmul(torch.addcmul(dh, w1, pn * qp), w2, p * qn, value=-1)
    return mat, torch.where(s, d_obs, coef * dh)


class EMLoss(EntryLoss):
    """[em] entropy maximisation on unobserved entries."""


    hparams_cls = EMParams

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        z, s = self.check_inputs(logits, observed, index)
        return entry_mean(self, z, em_entries, s, self.col("alpha", z), self.col("eps", z))


class EMAPLLoss(em_apl.EMAPLLoss, EntryLoss):
    """[em_apl] EM-APL's state from the built-in class, its step fused."""

    fused_grad = True

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        z, s = self.check_inputs(logits, observed, index)
        assert index is not None
        pseudo, t = self.batch_state(s, index, z)
        neg_beta = self.const("-beta", [-b for b in self.values("beta")], z.dtype, z.device)
        one = self.const("one", (1.0,), z.dtype, z.device, ())
        return entry_mean(self, z, em_entries, s, self.col("alpha", z), self.col("eps", z), (pseudo, t, neg_beta, one))
