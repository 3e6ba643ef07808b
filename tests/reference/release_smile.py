"""SMILE's classifier loss (Xu et al., NeurIPS 2022) as released: palm-ml/smile@8feb9b8:train_smile2.py
(``neg_log`` eps 1e-5, ``weighted_bce_loss``, the soft target ``D = mu D1 + (1 - mu) D2`` of the training loop).

The repository has no licence: an independent transcription of the code's behaviour, not a copy. What it
computes, with ``y = sigmoid(z / T)``: ``D nlog(y) + (1 - D) nlog(1 - y)`` per entry, the unobserved entries
divided by ``C - 1`` (``bias``) or times ``rate``, mean over B x C; ``D2`` is the observed labels with 0 -> ``p``
and ``D`` is detached. The inference model's loss (``vae_loss``) is not part of this reference.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOG_EPSILON = 1e-5


def classifier_loss(z: Tensor, obs: Tensor, d1: Tensor, *, T: float, p: float, mu: float, bias: bool,
                    rate: float) -> Tensor:
    """The classifier's batch loss."""
    y = torch.sigmoid(z / T)
    d2 = torch.where(obs == 0, torch.full_like(obs, p), obs)
    d = (mu * d1 + (1 - mu) * d2).detach()
    loss = d * -torch.log(y + LOG_EPSILON) + (1 - d) * -torch.log(1 - y + LOG_EPSILON)
    scale = 1 / (obs.shape[-1] - 1) if bias else rate
    return torch.where(obs == 0, loss * scale, loss).mean()
