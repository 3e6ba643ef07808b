"""Assume negative with label smoothing, AN-LS (Cole et al., CVPR 2021).

The AN targets are smoothed to ``1 - ls`` (observed) and ``ls`` (unobserved); with ``p = sigmoid(z)``
per entry ``t nlog(p) + (1 - t) nlog(1 - p)``, ``t = s (1 - ls) + (1 - s) ls``, ``nlog(x) = -log(x + eps)``;
averaged over B x C.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from spmlbench.losses.builtin._cole import COLE, COLE_EPS, nlog
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class ANLSParams(HParams):
    """Assume negative with label smoothing ``ls_coef``."""

    loss = "an_ls"
    ls_coef: float = 0.1
    eps: float = COLE_EPS

    def check(self) -> None:
        self.require("ls_coef", 0.0 <= self.ls_coef <= 1.0, "in [0, 1]")
        self.positive("eps")


def an_ls_loss(hp: ANLSParams, logits: Tensor, observed: Tensor) -> Tensor:
    """``t nlog(p) + (1 - t) nlog(1 - p)`` with the smoothed target ``t`` per entry."""
    p, s = torch.sigmoid(logits), observed.to(logits.dtype)
    t = s * (1 - hp.ls_coef) + (1 - s) * hp.ls_coef
    return t * nlog(p, hp.eps) + (1 - t) * nlog(1 - p, hp.eps)


register_loss("an_ls", params=ANLSParams, formula=an_ls_loss, title="Assume negative with label smoothing",
              **COLE, fused="spmlbench.losses.fused.cole:ANLSLoss", step_cost=1.3, order=30,
              reference="elijahcole/single-positive-multi-label@89152d5:losses.py")
