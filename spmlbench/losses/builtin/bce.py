"""Full-label BCE, the upper bound (Cole et al., CVPR 2021): trained on the clean labels.

Per entry, with ``p = sigmoid(z)`` and the clean label ``y``: ``y = 1: nlog(p)``, ``y = 0: nlog(1 - p)``,
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
class BCEParams(HParams):
    """Full-label BCE: only the log epsilon."""

    loss = "bce"
    eps: float = COLE_EPS

    def check(self) -> None:
        self.positive("eps")


def bce_loss(hp: BCEParams, logits: Tensor, labels: Tensor) -> Tensor:
    """``y nlog(p) + (1 - y) nlog(1 - p)`` per entry (``labels``: the clean labels)."""
    p = torch.sigmoid(logits)
    return torch.where(labels, nlog(p, hp.eps), nlog(1 - p, hp.eps))


register_loss("bce", params=BCEParams, formula=bce_loss, title="Full-label BCE (upper bound, clean labels)",
              **COLE, uses_clean_labels=True, fused="spmlbench.losses.fused.cole:BCELoss", order=10,
              reference="elijahcole/single-positive-multi-label@89152d5:losses.py")
