"""Asymmetric loss, ASL, on AN targets (Ben-Baruch et al., ICCV 2021), as the official code.

With ``p = sigmoid(z)``: positives ``x = p``; negatives ``x = min(1 - p + clip, 1)`` (probability shift
``p_m = max(p - clip, 0)``, ``x = 1 - p_m``). Per entry ``-(1 - x)^gamma log(max(x, eps))`` with
``gamma = gamma_pos`` (observed) or ``gamma_neg``; the focusing weight is detached (as the official code);
averaged over B x C.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


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


def asl_loss(hp: ASLParams, logits: Tensor, observed: Tensor) -> Tensor:
    """``-(1 - x)^gamma log(clamp(x, min=eps))`` per entry, weight detached."""
    p = torch.sigmoid(logits)
    x = torch.where(observed, p, torch.clamp(1 - p + hp.clip, max=1.0))
    s = observed.to(logits.dtype)
    gamma = s * hp.gamma_pos + (1 - s) * hp.gamma_neg
    weight = torch.pow(1 - x, gamma).detach()
    return -weight * torch.log(torch.clamp(x, min=hp.eps))


register_loss("asl", params=ASLParams, formula=asl_loss, title="Asymmetric loss on AN targets",
              paper="Ben-Baruch et al., ICCV", year=2021,
              citation="Ben-Baruch, Ridnik, Zamir, Noy, Friedman, Protter, Zelnik-Manor. Asymmetric Loss for "
                       "Multi-Label Classification. ICCV 2021.",
              fused="spmlbench.losses.fused.robust:ASLLoss", step_cost=1.7, order=130,
              reference="Alibaba-MIIL/ASL@8c9e0bd:src/loss_functions/losses.py")
