"""Focal loss on AN targets (Lin et al., ICCV 2017), as an SPML baseline.

Per entry, with ``p = sigmoid(z)``: ``s = 1: (1 - p)^gamma nlog(p)``; ``s = 0: p^gamma nlog(1 - p)``,
``nlog(x) = -log(x + eps)``; the focusing weights keep their gradient (standard focal loss); averaged
over B x C. eps = 1e-5: the published focal numbers the report compares with (Zhou et al., ECCV 2022)
come from the Cole et al.-derived codebase, whose log epsilon is 1e-5.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class FocalParams(HParams):
    """Focal loss: ``gamma`` (2) and the log epsilon."""

    loss = "focal"
    gamma: float = 2.0
    eps: float = 1e-5  # the Cole-derived codebase of Zhou et al. 2022

    def check(self) -> None:
        self.nonnegative("gamma")
        self.positive("eps")


def focal_loss(hp: FocalParams, logits: Tensor, observed: Tensor) -> Tensor:
    """``(1 - p_t)^gamma nlog(p_t)`` per entry, ``p_t = p`` where observed, ``1 - p`` elsewhere."""
    p = torch.sigmoid(logits)
    p_t = torch.where(observed, p, 1 - p)
    return (1 - p_t) ** hp.gamma * -torch.log(p_t + hp.eps)


register_loss("focal", params=FocalParams, formula=focal_loss, title="Focal loss on AN targets",
              paper="Lin et al., ICCV", year=2017,
              citation="Lin, Goyal, Girshick, He, Dollar. Focal Loss for Dense Object Detection. ICCV 2017.",
              fused="spmlbench.losses.fused.robust:FocalLoss", step_cost=1.5, order=120)
