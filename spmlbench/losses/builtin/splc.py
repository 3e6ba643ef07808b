"""Self-paced loss correction, SPLC (Zhang et al., 2021), on logits as the official code.

Observed positives: the focal-margin loss ``-(1 - q)^gamma log q``, ``q = sigmoid(z - margin)``. From
``change_epoch`` (1-based), unobserved entries with ``p = sigmoid(z) > tau`` count as positives (focal loss
``-(1 - p)^gamma log p``, no margin; the switch carries no gradient); the rest are negatives
``-p^gamma log(1 - p)``. Weights keep their gradient; averaged over B x C.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from spmlbench.losses.builtin._hill import ZHANG, focal_log
from spmlbench.hparams import HParams
from spmlbench.losses.plain import Step
from spmlbench.losses.registry import register_loss


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


def splc_loss(hp: SPLCParams, logits: Tensor, observed: Tensor, step: Step) -> Tensor:
    """Focal margin (observed), focal (confident unobserved, from ``change_epoch``), focal negative (rest)."""
    confident = (torch.sigmoid(logits) > hp.tau) & (step.epoch >= hp.change_epoch)
    positive = torch.where(observed, focal_log(logits - hp.margin, hp.gamma), focal_log(logits, hp.gamma))
    return torch.where(observed | confident, positive, focal_log(-logits, hp.gamma))


register_loss("splc", params=SPLCParams, formula=splc_loss, title="Self-paced loss correction", **ZHANG,
              scheduled=True, fused="spmlbench.losses.fused.robust:SPLCLoss", step_cost=1.7, order=150,
              reference="xinyu1205/robust-loss-mlml@dcfa4d5:src/loss_functions/losses.py")
