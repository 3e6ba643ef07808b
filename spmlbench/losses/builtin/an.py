"""Assume negative, AN (Cole et al., CVPR 2021): every unobserved label is taken as negative.

Per entry, with ``p = sigmoid(z)`` and the observed positive ``s``: ``s = 1: nlog(p)``,
``s = 0: nlog(1 - p)``, ``nlog(x) = -log(x + eps)``, eps = 1e-5; averaged over B x C.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from spmlbench.losses.builtin._cole import COLE, COLE_EPS, nlog
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class ANParams(HParams):
    """Assume negative: only the log epsilon."""

    loss = "an"
    eps: float = COLE_EPS

    def check(self) -> None:
        self.positive("eps")


def an_loss(hp: ANParams, logits: Tensor, observed: Tensor) -> Tensor:
    """``s nlog(p) + (1 - s) nlog(1 - p)`` per entry."""
    p = torch.sigmoid(logits)
    return torch.where(observed, nlog(p, hp.eps), nlog(1 - p, hp.eps))


register_loss("an", params=ANParams, formula=an_loss, title="Assume negative", **COLE,
              fused="spmlbench.losses.fused.cole:ANLoss", order=20,
              reference="elijahcole/single-positive-multi-label@89152d5:losses.py")
