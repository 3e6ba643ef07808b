"""Hill loss (Zhang et al., 2021), on logits as the official code.

Per entry, with ``p = sigmoid(z)``: observed positives get the focal-margin loss
``-(1 - q)^gamma log q``, ``q = sigmoid(z - margin)``; unobserved entries the Hill loss
``(lamb - p) p^2``; weights keep their gradient (as the official code); averaged over B x C.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from spmlbench.losses.builtin._hill import ZHANG, focal_log
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class HillParams(HParams):
    """Hill: ``lamb`` (1.5), ``margin`` (1), ``gamma`` (2)."""

    loss = "hill"
    lamb: float = 1.5
    margin: float = 1.0
    gamma: float = 2.0

    def check(self) -> None:
        self.nonnegative("lamb", "margin", "gamma")


def hill_loss(hp: HillParams, logits: Tensor, observed: Tensor) -> Tensor:
    """Focal margin on observed positives, ``(lamb - p) p^2`` on unobserved entries."""
    p = torch.sigmoid(logits)
    return torch.where(observed, focal_log(logits - hp.margin, hp.gamma), (hp.lamb - p) * p**2)


register_loss("hill", params=HillParams, formula=hill_loss, title="Hill loss", **ZHANG,
              fused="spmlbench.losses.fused.robust:HillLoss", step_cost=1.8, order=140,
              reference="xinyu1205/robust-loss-mlml@dcfa4d5:src/loss_functions/losses.py")
