"""Zhou et al. (ECCV 2022) as released: Correr-Zhou/SPML-AckTheUnknown@ae1ccaf:losses.py.

MIT licence, Copyright (c) 2022 Donghao Zhou. Transcribed: ``neg_log`` (eps 1e-5), ``loss_EM`` and
``loss_EM_APL`` (its soft pseudo-negatives are stored in the observed matrix as ``-t``) and the mean over
B x C. Changes: the ``batch`` / ``P`` dictionaries are plain arguments; assertions dropped.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOG_EPSILON = 1e-5


def neg_log(x: Tensor) -> Tensor:
    """``-log(x + 1e-5)``."""
    return -torch.log(x + LOG_EPSILON)


def loss_em_apl(z: Tensor, obs: Tensor, alpha: float, beta: float = 0.0) -> Tensor:
    """``loss_EM_APL``; with no entry below 0 in ``obs`` it is ``loss_EM``."""
    preds = torch.sigmoid(z)
    loss_mtx = torch.zeros_like(preds)
    pos, unk, soft = obs == 1, obs == 0, obs < 0
    loss_mtx[pos] = neg_log(preds[pos])
    loss_mtx[unk] = -alpha * (preds[unk] * neg_log(preds[unk]) + (1 - preds[unk]) * neg_log(1 - preds[unk]))
    soft_label = -obs[soft]
    loss_mtx[soft] = beta * (soft_label * neg_log(preds[soft]) + (1 - soft_label) * neg_log(1 - preds[soft]))
    return loss_mtx.mean()
