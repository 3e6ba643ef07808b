"""AEVLP (Tran et al., ICCV 2025), as released
(Fsoft-AIC/AEVLP@0bad82a: ``GPR_loss`` with DAMP pseudo-labels).

Pseudo-labels (DAMP, :func:`~spmlbench.losses.builtin._pseudo.damp_rule`) from CLIP ViT-B/16 scores of
the global image and its ``grid x grid`` tiles. With ``p = sigmoid(z)``, ``k = sigmoid(w p + b)`` and
``v = exp(-(p - mu)^2 / (2 sigma^2))`` from the detached p (GR's schedule, ``linear_init`` 0)::

    s = 1:                 nlog(p)                                            (eps 1e-7)
    s = 0, PL = 0:         v [k (1 - p^q2) / q2 + (1 - k) (1 - (1 - p)^q3) / q3]
    s = 0, PL = 1:         (1 - v') [rho nlog(p) + (1 - rho) nlog(1 - p)],  v' = clip(v, 1 - lam_1, 1 - lam_2)
    s = 0, PL = -1:        v nlog(1 - p)                                      (only with negatives)

averaged over B x C, plus ``reg ((sum_c p).mean_batch - expected_num_pos)^2 / C^2``. As released DAMP
writes its negatives as 0 (they only erase coinciding positives), so the -1 branch is dead;
``negatives = true`` makes them -1 as the paper describes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor

from spmlbench.losses.builtin._pseudo import PseudoLabelLoss, damp_rule
from spmlbench.losses.builtin._cole import nlog
from spmlbench.losses.builtin.gr import GRParams, gr_schedule, robust_log
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


TINY = 1e-30


@dataclasses.dataclass(frozen=True)
class AEVLPParams(HParams):
    """AEVLP: the VOC row of the released configs by default (per dataset: loss_defaults.toml)."""

    loss = "aevlp"
    beta: tuple[float, ...] = dataclasses.field(default=(0.0, 2.0, -2.0, -2.0), metadata={"length": 4})
    alpha: tuple[float, ...] = dataclasses.field(default=(0.5, 2.0, 0.8, 0.5), metadata={"length": 4})
    q2: float = 0.01
    q3: float = 1.0
    lam: tuple[float, ...] = dataclasses.field(default=(0.7, 0.4), metadata={"length": 2})
    rho: float = 0.9
    reg: float = 0.05
    expected_num_pos: float = 1.5
    temp: float = 0.01
    eta: float = 0.0
    threshold: float = 0.5
    grid: int = 4
    neg_ratio: float = 0.2
    top_k: int = 3
    negatives: bool = False
    eps: float = 1e-7

    def check(self) -> None:
        self.require("beta", len(self.beta) == 4 and all(math.isfinite(x) for x in self.beta),
                     "4 finite numbers [w0, wT, b0, bT]")
        self.require("alpha", len(self.alpha) == 4 and self.alpha[1] > 0 and self.alpha[3] > 0,
                     "[mu0, sig0, muT, sigT] with sig0, sigT > 0")
        self.require("lam", len(self.lam) == 2 and 0 <= self.lam[1] <= self.lam[0] <= 1,
                     "[lam_1, lam_2] with 0 <= lam_2 <= lam_1 <= 1")
        self.positive("q2", "q3", "temp", "eps")
        self.nonnegative("reg", "expected_num_pos", "eta", "threshold")
        self.require("rho", 0.0 <= self.rho <= 1.0, "in [0, 1]")
        self.require("grid", self.grid >= 1, ">= 1 (tiles per side)")
        self.require("top_k", self.top_k >= 1, ">= 1")
        self.require("neg_ratio", 0.0 <= self.neg_ratio < 1.0, "in [0, 1)")

    def schedule_params(self) -> GRParams:
        """GR's schedule with these ``beta`` / ``alpha`` (AEVLP's train.py: the same, linear_init 0)."""
        return GRParams(beta=self.beta, alpha=self.alpha)


def aevlp_loss(hp: AEVLPParams, logits: Tensor, observed: Tensor, pl: Tensor, step: tuple[float, ...]) -> Tensor:
    """Per entry the GPR loss, with the schedule's ``(w, b, mu, sigma)`` in ``step``; the regulariser
    (one number per batch) spread over the B x C entries so the mean adds it once."""
    w, b, mu, sigma = step
    p, q = torch.sigmoid(logits), torch.sigmoid(-logits)  # q = 1 - p without cancellation near p = 1
    pd = p.detach()
    k = torch.sigmoid(w * pd + b)
    v = torch.exp(-0.5 * ((pd - mu) / sigma) ** 2)
    # x^q2 has an infinite slope at x = 0: a floor far below float32's resolution of p keeps it finite
    unlabelled = v * (k * robust_log(p.clamp_min(TINY), hp.q2) + (1 - k) * robust_log(q.clamp_min(TINY), hp.q3))
    vc = v.clamp(1 - hp.lam[0], 1 - hp.lam[1])
    pos = (1 - vc) * (hp.rho * nlog(p, hp.eps) + (1 - hp.rho) * nlog(q, hp.eps))
    out = torch.where(observed, nlog(p, hp.eps), unlabelled)
    out = torch.where(~observed & (pl == 1), pos, out)
    out = torch.where(~observed & (pl == -1), v * nlog(q, hp.eps), out)
    c = p.shape[-1]
    reg = hp.reg * (p.sum(dim=-1).mean() - hp.expected_num_pos) ** 2 / c**2
    return out + reg


class AEVLPLoss(PseudoLabelLoss):
    """[aevlp] M configs, their DAMP pseudo-label tables (M, N, C) rebuilt each epoch from the CLIP cache."""

    hparams_cls = AEVLPParams
    pseudo_source = "damp"

    def views(self, hp: Any) -> int:
        return 1 + hp.grid**2

    def rule(self, hp: Any, cos: Tensor, observed: Tensor) -> Tensor:
        return damp_rule(cos, observed, temp=hp.temp, eta=hp.eta, threshold=hp.threshold, top_k=hp.top_k,
                         neg_ratio=hp.neg_ratio, negatives=hp.negatives)

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-config values (M,) of :func:`aevlp_loss` (autograd)."""
        z, s = self.check_inputs(logits, observed, index)
        assert index is not None
        pl = self.batch_pl(index, z)
        def formula(hp: Any, zm: Tensor, sm: Tensor, plm: Tensor) -> Tensor:
            return aevlp_loss(hp, zm, sm, plm, gr_schedule(hp.schedule_params(), self.epoch, self.num_epochs))

        return self.per_config_means(formula, z, s, pl)


register_loss("aevlp", params=AEVLPParams, formula=aevlp_loss,
              title="AEVLP: GPR loss with DAMP CLIP pseudo-labels", paper="Tran et al., ICCV", year=2025,
              citation="Tran et al. AEVLP (GPR loss with DAMP pseudo-labels). ICCV 2025. "
                       "Code: github.com/Fsoft-AIC/AEVLP (0bad82a).",
              stateful=True, scheduled=True, batched=AEVLPLoss, pseudo="damp", step_cost=2.0, order=180,
              reference="Fsoft-AIC/AEVLP@0bad82a:losses.py")
