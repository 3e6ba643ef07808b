"""Entropy maximisation, EM (Zhou et al., ECCV 2022): unobserved labels are pushed towards p = 0.5.

Per entry, with ``p = sigmoid(z)``: ``s = 1: nlog(p)``; ``s = 0: -alpha H(p)``,
``H(p) = p nlog(p) + (1 - p) nlog(1 - p)``, ``nlog(x) = -log(x + eps)``, eps = 1e-5; averaged over B x C.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from spmlbench.losses.builtin._em import EM_EPS, EM_PAPER, entropy_maximisation
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class EMParams(HParams):
    """EM: ``alpha`` per dataset (fallback without a dataset: 0.1, the COCO/NUS value)."""

    loss = "em"
    alpha: float = 0.1
    eps: float = EM_EPS

    def check(self) -> None:
        self.nonnegative("alpha")
        self.positive("eps")


def em_loss(hp: EMParams, logits: Tensor, observed: Tensor) -> Tensor:
    """``s nlog(p) - (1 - s) alpha H(p)`` per entry."""
    return entropy_maximisation(torch.sigmoid(logits), observed, hp.alpha, hp.eps)


register_loss("em", params=EMParams, formula=em_loss, title="Entropy maximisation", **EM_PAPER,
              fused="spmlbench.losses.fused.em:EMLoss", step_cost=1.1, order=100,
              reference="Correr-Zhou/SPML-AckTheUnknown@ae1ccaf:losses.py")
