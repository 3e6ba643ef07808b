"""Large Loss Matters (Kim et al., CVPR 2022) as released: snucml/LargeLossMatters@5025d16 ``losses.py``
(``compute_batch_loss``), ``config.py`` (``delta_rel /= 100``) and ``train.py`` (``clean_rate`` starts at 1 and
loses ``delta_rel`` after every epoch); BoostLU's LL losses (youngwk/BridgeGapExplanationPAMC@4a1986c
``losses.py``) compute the same on the boosted logits.

Neither repository has a licence: this is an independent transcription of the code's behaviour (not a copy).
What it reproduces: the AN loss is ``binary_cross_entropy_with_logits`` per entry; epoch 1 unmodified; else
``k = ceil(B C (1 - clean_rate))`` (LL-Cp: ``ceil(B C delta)``) in the release's float arithmetic; the k-th
largest of ``unobserved_mask * loss`` is the threshold; entries at or above it are set to 0 (LL-R) or to the
BCE towards the flipped label (LL-Ct, LL-Cp); mean over B x C. Changes: LL-Cp takes its intended branch (the
release's ``mod_scheme is 'LL-Cp'`` string identity test is false, so the released LL-Cp runs LL-Ct; BoostLU's
``==`` runs it); k is capped at ``B C``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def release_k(batch: int, classes: int, epoch: int, delta_rel: float, permanent: bool) -> int:
    """The release's k in 1-based ``epoch`` (0 in epoch 1)."""
    delta = delta_rel / 100
    clean = 1
    for _ in range(epoch - 1):
        clean -= delta
    if clean == 1:
        return 0
    k = math.ceil(batch * classes * delta) if permanent else math.ceil(batch * classes * (1 - clean))
    return min(k, batch * classes)


def large_loss(z: Tensor, obs: Tensor, epoch: int, delta_rel: float, scheme: str) -> Tensor:
    """The batch loss of ``scheme`` (``reject``, ``temporary`` or ``permanent``) in ``epoch``."""
    bce = F.binary_cross_entropy_with_logits(z, obs, reduction="none")
    flipped = F.binary_cross_entropy_with_logits(z, 1 - obs, reduction="none")
    k = release_k(z.shape[0], z.shape[1], epoch, delta_rel, scheme == "permanent")
    if k == 0:
        return bce.mean()
    ranked = (obs == 0) * bce
    threshold = torch.topk(ranked.flatten(), k).values[-1]
    keep = ranked < threshold
    other = torch.zeros_like(bce) if scheme == "reject" else flipped
    return torch.where(keep, bce, other).mean()
