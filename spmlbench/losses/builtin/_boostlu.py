"""What the BoostLU losses (Kim et al., CVPR 2023) share: the citation and the head's hyperparameter.

BoostLU is a head, not a new loss: a 1x1-conv class activation map on the backbone's last feature map,
its positive activations multiplied by ``alpha`` (5) before average pooling, in training and inference
(youngwk/BridgeGapExplanationPAMC@4a1986c models.py). The LL-R / LL-Ct / LL-Cp losses of Kim et al. 2022
train on its logits. The head is built by the end-to-end trainers (``spmlbench.train.e2e_model``) for a loss
registered with ``head="boostlu"``; on pooled features (linear mode) it cannot be expressed.
"""

from __future__ import annotations

from typing import Any

BOOSTLU = dict(paper="Kim et al., CVPR", year=2023,
               citation="Kim et al. Bridging the Gap between Model Explanations in Partially Annotated Multi-label "
                        "Classification (BoostLU). CVPR 2023. Code: github.com/youngwk/BridgeGapExplanationPAMC "
                        "(4a1986c).")
BOOSTLU_ALPHA = 5.0  # config.py --alpha, the README's value on every dataset


def check_alpha(hp: Any) -> None:
    """``alpha`` > 0 (1: the plain linear head)."""
    hp.positive("alpha")
