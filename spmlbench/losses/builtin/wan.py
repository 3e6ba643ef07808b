"""Weighted assume negative, WAN (Cole et al., CVPR 2021): AN with negatives down-weighted by 1 / (C - 1).

Per entry, with ``p = sigmoid(z)``: ``s = 1: nlog(p)``, ``s = 0: nlog(1 - p) / (C - 1)``,
``nlog(x) = -log(x + eps)``; averaged over B x C.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from spmlbench.losses.builtin._cole import COLE, COLE_EPS, nlog
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class WANParams(HParams):
    """Weighted assume negative: only the log epsilon."""

    loss = "wan"
    eps: float = COLE_EPS

    def check(self) -> None:
        self.positive("eps")


def wan_loss(hp: WANParams, logits: Tensor, observed: Tensor) -> Tensor:
    """``s nlog(p) + (1 - s) nlog(1 - p) / (C - 1)`` per entry."""
    p = torch.sigmoid(logits)
    num_classes = logits.shape[-1]
    return torch.where(observed, nlog(p, hp.eps), nlog(1 - p, hp.eps) / (num_classes - 1))


register_loss("wan", params=WANParams, formula=wan_loss, title="Weighted assume negative", **COLE,
              fused="spmlbench.losses.fused.cole:WANLoss", step_cost=1.15, order=40,
              reference="elijahcole/single-positive-multi-label@89152d5:losses.py")
