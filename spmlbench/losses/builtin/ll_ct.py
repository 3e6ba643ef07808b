"""Large loss temporary correction, LL-Ct (Kim et al., CVPR 2022): the largest unobserved AN losses are
treated as positives for this batch.

Per entry: the AN loss, with ``-log p = softplus(-z)`` instead on the selected large losses (see
``_large_loss.py`` for k); averaged over B x C.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from spmlbench.losses.builtin._large_loss import LARGE_LOSS, assume_negative, large_losses
from spmlbench.hparams import HParams
from spmlbench.losses.plain import Step
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class LLCtParams(HParams):
    """LL-Ct: ``delta_rel`` in percent per epoch (default 0.2)."""

    loss = "ll_ct"
    delta_rel: float = 0.2

    def check(self) -> None:
        self.require("delta_rel", 0.0 < self.delta_rel < 100.0, "in (0, 100) (percent)")


def ll_ct_loss(hp: LLCtParams, logits: Tensor, observed: Tensor, step: Step) -> Tensor:
    """AN per entry against the observed labels plus the selected large losses taken as positives."""
    chosen = large_losses(logits, observed, step, hp.delta_rel, permanent=False)
    return assume_negative(logits, observed if chosen is None else observed | chosen)


register_loss("ll_ct", params=LLCtParams, formula=ll_ct_loss, title="Large loss temporary correction",
              **LARGE_LOSS, scheduled=True, vectorize="loop", fused="spmlbench.losses.fused.ll:LLCtLoss",
              step_cost=1.2, order=80,
              reference="snucml/LargeLossMatters@5025d16:losses.py", version=2)
