"""What the Large Loss Matters losses (Kim et al., CVPR 2022) share: the AN loss on logits, the schedule
of how many entries to modify, and which entries.

Base loss: assume-negative BCE on logits (``binary_cross_entropy_with_logits`` in the reference, so no eps).
Epoch 1 is unmodified. From epoch ``e >= 2``, per batch, the unobserved entries whose AN loss is ``>=`` the
k-th largest unobserved AN loss are selected (observed entries rank as 0 and are never selected), with
``k = ceil(B C (e - 1) delta_rel / 100)`` (LL-R, LL-Ct) or ``ceil(B C delta_rel / 100)`` (LL-Cp); the product
is rounded to 9 decimals before ``ceil`` so that float noise (e.g. 0.1 * 3) cannot add one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from spmlbench.losses.plain import Step

LARGE_LOSS = dict(paper="Kim et al., CVPR", year=2022,
                  citation="Kim, Kim, Akata, Lee. Large Loss Matters in Weakly Supervised Multi-Label "
                           "Classification. CVPR 2022.")


def ll_num_selected(batch: int, num_classes: int, epoch: int, delta_rel: float, permanent: bool) -> int:
    """k for one batch: ``ceil(B C (e-1) delta_rel / 100)`` (LL-Cp: ``ceil(B C delta_rel / 100)``), 0 in epoch 1."""
    if epoch < 2:
        return 0
    factor = 1 if permanent else epoch - 1
    k = math.ceil(round(batch * num_classes * factor * delta_rel / 100.0, 9))
    return min(k, batch * num_classes)


def assume_negative(logits: Tensor, observed: Tensor) -> Tensor:
    """AN's BCE with logits per entry: ``softplus(-z)`` where observed, ``softplus(z)`` elsewhere."""
    return F.softplus(torch.where(observed, -logits, logits))


def large_losses(logits: Tensor, observed: Tensor, step: Step, delta_rel: float, permanent: bool) -> Tensor | None:
    """(B, C) bool: the unobserved entries with the k largest AN losses (ties at the k-th included);
    None when k = 0 (epoch 1)."""
    b, c = logits.shape
    k = ll_num_selected(b, c, step.epoch, delta_rel, permanent)
    if k == 0:
        return None
    unobserved_loss = torch.where(observed, 0.0, assume_negative(logits, observed).detach())
    kth = torch.topk(unobserved_loss.flatten(), k).values[-1]
    return (unobserved_loss >= kth) & ~observed
