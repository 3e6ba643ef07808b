"""Large loss rejection, LL-R (Kim et al., CVPR 2022): the largest unobserved AN losses are set to 0.

Per entry: the AN loss (``softplus(-z)`` observed, ``softplus(z)`` unobserved), 0 on the selected large
losses (see ``_large_loss.py`` for k); averaged over B x C. ``delta_rel`` in percent per epoch.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from spmlbench.losses.builtin._large_loss import LARGE_LOSS, assume_negative, large_losses
from spmlbench.hparams import HParams
from spmlbench.losses.plain import Step
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class LLRParams(HParams):
    """LL-R: ``delta_rel`` in percent per epoch (default 0.5)."""

    loss = "ll_r"
    delta_rel: float = 0.5

    def check(self) -> None:
        self.require("delta_rel", 0.0 < self.delta_rel < 100.0, "in (0, 100) (percent)")


def ll_r_loss(hp: LLRParams, logits: Tensor, observed: Tensor, step: Step) -> Tensor:
    """AN per entry, rejected (0) where the unobserved loss is among the k largest."""
    loss = assume_negative(logits, observed)
    chosen = large_losses(logits, observed, step, hp.delta_rel, permanent=False)
    return loss if chosen is None else torch.where(chosen, 0.0, loss)


register_loss("ll_r", params=LLRParams, formula=ll_r_loss, title="Large loss rejection", **LARGE_LOSS,
              scheduled=True, vectorize="loop", fused="spmlbench.losses.fused.ll:LLRLoss", step_cost=1.2, order=70,
              reference="snucml/LargeLossMatters@5025d16:losses.py", version=2)
