"""BoostLU + LL-R (Kim et al., CVPR 2023): the LL-R loss (``ll_r.py``, Kim et al. 2022) on the logits of the
BoostLU head (``_boostlu.py``): ``logit_c = mean_hw(where(CAM > 0, alpha CAM, CAM))``, ``CAM = conv1x1(F)``.

Modes e2e and linear-init (the head needs the backbone's feature map); with ``alpha = 1`` the head is the
plain linear head on average-pooled features.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from spmlbench.losses.builtin._boostlu import BOOSTLU, BOOSTLU_ALPHA, check_alpha
from spmlbench.losses.builtin.ll_r import LLRParams, ll_r_loss
from spmlbench.losses.plain import Step
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class BoostLULLRParams(LLRParams):
    """LL-R's ``delta_rel`` and the head's ``alpha`` (the boost of positive activations)."""

    loss = "boostlu_ll_r"
    alpha: float = BOOSTLU_ALPHA

    def check(self) -> None:
        super().check()
        check_alpha(self)


def boostlu_ll_r_loss(hp: BoostLULLRParams, logits: Tensor, observed: Tensor, step: Step) -> Tensor:
    """LL-R per entry on the BoostLU logits (the boost itself is in the head)."""
    return ll_r_loss(hp, logits, observed, step)


register_loss("boostlu_ll_r", params=BoostLULLRParams, formula=boostlu_ll_r_loss, title="BoostLU + large loss rejection", **BOOSTLU,
              scheduled=True, vectorize="loop", fused="spmlbench.losses.fused.ll:LLRLoss", head="boostlu",
              step_cost=1.2, order=91,
              reference="youngwk/BridgeGapExplanationPAMC@4a1986c:losses.py", version=2)
