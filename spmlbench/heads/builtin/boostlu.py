"""BoostLU (Kim et al., CVPR 2023; youngwk/BridgeGapExplanationPAMC@4a1986c models.py): a head, not a new loss.
On the backbone's feature map ``F (B, D, h, w)``::

    CAM = W F + b            (a 1x1 convolution: ``weight (C, D)``, ``bias (C,)``)
    logit_c = mean_hw(where(CAM > 0, alpha CAM, CAM))

in training and inference, ``alpha = 5`` (config.py ``--alpha``, the README's value on every dataset). The
parameters are named like ``nn.Linear``'s, so a linear head (LinearInit's linear phase) loads into it; with
``alpha = 1`` it computes the linear head on the average-pooled map. Modes e2e and linear-init, and in linear
mode on the cached layer4 maps (``spmlbench features DS --maps``). Methods: BoostLU with the large-loss losses
of Kim et al. 2022 (LL-R, LL-Ct, LL-Cp), as the paper reports them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from spmlbench.heads.builtin.linear import seed_linear
from spmlbench.heads.registry import Method, register_head
from spmlbench.hparams import HParams

BOOSTLU = dict(paper="Kim et al., CVPR", year=2023,
               citation="Kim et al. Bridging the Gap between Model Explanations in Partially Annotated Multi-label "
                        "Classification (BoostLU). CVPR 2023. Code: github.com/youngwk/BridgeGapExplanationPAMC "
                        "(4a1986c).",
               reference="youngwk/BridgeGapExplanationPAMC@4a1986c:losses.py", step_cost=1.2)


@dataclasses.dataclass(frozen=True)
class BoostLUOptions(HParams):
    """The boost of positive activations (1: the plain linear head)."""

    alpha: float = 5.0

    def check(self) -> None:
        self.positive("alpha")


class BoostLUHead(nn.Module):
    """The boosted class activation map averaged over the map (see the module docstring)."""

    def __init__(self, dim: int, num_classes: int, alpha: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.alpha = float(alpha)

    def cam(self, fmap: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``(B, C, h, w)``."""
        return torch.einsum("bdhw,cd->bchw", fmap, self.weight) + self.bias.view(1, -1, 1, 1)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)``: the boosted CAM averaged over the map."""
        cam = self.cam(fmap)
        return torch.where(cam > 0, self.alpha * cam, cam).mean(dim=(2, 3))


def build_boostlu(dim: int, num_classes: int, seed: int, options: Any) -> BoostLUHead:
    """The BoostLU head with the seed's linear-head init in its 1x1 convolution."""
    return seed_linear(BoostLUHead(dim, num_classes, float(options.alpha)), seed, dim, num_classes)


register_head(
    "boostlu", build=build_boostlu, title="BoostLU: boosted class activation maps", consumes="map",
    modes=("linear", "e2e", "linear-init"), options=BoostLUOptions, loads_linear=True,
    citation=BOOSTLU["citation"],
    methods=tuple(Method(f"boostlu_{loss}", loss=loss, meta={"title": f"BoostLU + {title}", "order": order, **BOOSTLU})
                  for loss, title, order in (("ll_r", "large loss rejection", 91),
                                             ("ll_ct", "large loss temporary correction", 92),
                                             ("ll_cp", "large loss permanent correction", 93))))
