"""A weighted assume-negative loss as a spmlbench plugin (docs/adding-a-loss.md).

    spmlbench run --losses an,an_weighted --plugin examples/my_loss.py
"""

import dataclasses

import torch

from spmlbench.losses import HParams, register_loss


@dataclasses.dataclass(frozen=True)
class WeightedANParams(HParams):
    """``neg_weight``: the weight of the assumed negatives (1 is plain AN)."""

    neg_weight: float = 0.5
    eps: float = 1e-5

    def check(self) -> None:
        self.positive("neg_weight", "eps")


@register_loss("an_weighted", params=WeightedANParams, title="Assume negative, weighted negatives",
               paper="Example", year=2026, citation="docs/adding-a-loss.md")
def weighted_an(hp, logits, observed):
    """s = 1: -log(p + eps); s = 0: -neg_weight * log(1 - p + eps), per entry."""
    p = torch.sigmoid(logits)
    return torch.where(observed, -torch.log(p + hp.eps), -hp.neg_weight * torch.log(1 - p + hp.eps))
