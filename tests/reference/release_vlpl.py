"""VLPL (Xing et al., CVPRW 2024) as released: mvrl/VLPL@ed09b59:losses.py ``loss_EM_PL`` (MIT licence,
Copyright (c) 2024 Xin Xing, Zhexiao Xiong, Abby Stylianou, Srikumar Sastry, Liyu Gong, Nathan Jacobs).

Transcribed for ``epoch > warmup_epoch`` (``warmup_epoch`` 0: every epoch): ``final = where(obs == 0, PL, obs)``;
observed ``neg_log(p)``; ``final == 0`` EM ``-alpha [p nlog(p) + (1 - p) nlog(1 - p)]``; pseudo positives
``beta_pos [0.9 nlog(p) + 0.1 nlog(1 - p)]``; entries with ``PL == -1`` keep 0 (the negative branch sits in a
string block); mean over B x C; eps 1e-5. Changes: ``batch`` / ``P`` become arguments.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOG_EPSILON = 1e-5


def neg_log(x: Tensor) -> Tensor:
    """``-log(x + 1e-5)``."""
    return -torch.log(x + LOG_EPSILON)


def loss_em_pl(z: Tensor, obs: Tensor, pl: Tensor, alpha: float, beta_pos: float) -> Tensor:
    """``loss_EM_PL`` after the warm-up."""
    preds = torch.sigmoid(z)
    final = torch.where(obs == 0, pl, obs)
    loss_mtx = torch.zeros_like(preds)
    loss_mtx[obs == 1] = neg_log(preds[obs == 1])
    unk = final == 0
    loss_mtx[unk] = -alpha * (preds[unk] * neg_log(preds[unk]) + (1 - preds[unk]) * neg_log(1 - preds[unk]))
    mask_pos = (obs == 0) & (pl == 1)
    loss_mtx[mask_pos] = beta_pos * (0.9 * neg_log(preds[mask_pos]) + 0.1 * neg_log(1 - preds[mask_pos]))
    return loss_mtx.mean()
