"""What the Large Loss Matters losses (Kim et al., CVPR 2022) share: the AN loss on logits, the schedule
of how many entries to modify, and which entries.

Base loss: assume-negative BCE on logits (``binary_cross_entropy_with_logits`` in the reference, so no eps).
Epoch 1 is unmodified. From epoch ``e >= 2``, per batch, the unobserved entries whose AN loss is ``>=`` the
k-th largest unobserved AN loss are selected (observed entries rank as 0 and are never selected), with
``k = ceil(B C (e - 1) delta_rel / 100)`` (LL-R, LL-Ct) or ``ceil(B C delta_rel / 100)`` (LL-Cp), computed
with the release's float arithmetic (snucml/LargeLossMatters@5025d16 ``config.py``, ``train.py``,
``losses.py``): ``delta = delta_rel / 100``; a ``clean_rate`` starts at 1 and loses ``delta`` after every
epoch; ``k = ceil(B C (1 - clean_rate))`` (LL-Cp: ``ceil(B C delta)``). Float drift then decides some
cells (batch 16, 20 classes, delta_rel 0.5, epoch 6: ``320 (1 - clean_rate) = 8.000000000000007``, k 9,
not 8); the published numbers came from this arithmetic. k is capped at ``B C`` (the release would fail).
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


def clean_rate(epoch: int, delta_rel: float) -> float:
    """The release's ``clean_rate`` in (1-based) epoch ``epoch``: 1, less ``delta_rel / 100`` after each epoch."""
    delta = delta_rel / 100
    rate: float = 1
    for _ in range(epoch - 1):
        rate -= delta
    return rate


def ll_num_selected(batch: int, num_classes: int, epoch: int, delta_rel: float, permanent: bool) -> int:
    """k for one batch: ``ceil(B C (1 - clean_rate))`` (LL-Cp: ``ceil(B C delta_rel / 100)``), 0 in epoch 1."""
    if epoch < 2:
        return 0
    if permanent:
        k = math.ceil(batch * num_classes * (delta_rel / 100))
    else:
        k = math.ceil(batch * num_classes * (1 - clean_rate(epoch, delta_rel)))
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
