"""Cole et al. (CVPR 2021) as released: elijahcole/single-positive-multi-label@89152d5:losses.py.

MIT licence, Copyright (c) 2021 Elijah Cole. Transcribed: ``neg_log``, ``expected_positive_regularizer``,
``loss_bce``, ``loss_an``, ``loss_an_ls``, ``loss_wan``, ``loss_epr``, ``loss_role`` and the reduction of
``compute_batch_loss`` (``(loss_mtx / (B C)).sum() + reg``). Changes: the ``batch`` / ``P`` dictionaries are
plain arguments; the input assertions are dropped; ``loss_mtx = zeros_like(observed)`` is built in the
logits' dtype (the release's observed labels are float32 like its logits); ROLE's ``label_vec_est`` is
``sigmoid`` of the label estimator's logits, as the release's ``LabelEstimator`` returns.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOG_EPSILON = 1e-5


def neg_log(x: Tensor) -> Tensor:
    """``-log(x + 1e-5)``."""
    return -torch.log(x + LOG_EPSILON)


def expected_positive_regularizer(preds: Tensor, expected_num_pos: float) -> Tensor:
    """``(mean_b sum_c p - k)^2`` (norm '2')."""
    return (preds.sum(1).mean(0) - expected_num_pos) ** 2


def reduce(loss_mtx: Tensor, reg: Tensor | None = None) -> Tensor:
    """``compute_batch_loss``: ``(loss_mtx / (B C)).sum()`` plus the regulariser."""
    b, c = loss_mtx.shape
    main = (loss_mtx / (c * b * torch.ones_like(loss_mtx))).sum()
    return main if reg is None else main + reg


def _pos_neg(preds: Tensor, obs: Tensor, neg_scale: float = 1.0) -> Tensor:
    loss_mtx = torch.zeros_like(obs)
    loss_mtx[obs == 1] = neg_log(preds[obs == 1])
    loss_mtx[obs == 0] = neg_log(1.0 - preds[obs == 0]) / neg_scale
    return loss_mtx


def loss_an(z: Tensor, obs: Tensor) -> Tensor:
    """``loss_an`` (and ``loss_bce`` on the clean labels)."""
    return reduce(_pos_neg(torch.sigmoid(z), obs))


def loss_wan(z: Tensor, obs: Tensor) -> Tensor:
    """``loss_wan``: unobserved entries divided by ``C - 1``."""
    return reduce(_pos_neg(torch.sigmoid(z), obs, float(z.shape[1] - 1)))


def loss_an_ls(z: Tensor, obs: Tensor, ls_coef: float) -> Tensor:
    """``loss_an_ls``."""
    preds = torch.sigmoid(z)
    loss_mtx = torch.zeros_like(obs)
    pos, neg = obs == 1, obs == 0
    loss_mtx[pos] = (1.0 - ls_coef) * neg_log(preds[pos]) + ls_coef * neg_log(1.0 - preds[pos])
    loss_mtx[neg] = (1.0 - ls_coef) * neg_log(1.0 - preds[neg]) + ls_coef * neg_log(preds[neg])
    return reduce(loss_mtx)


def loss_epr(z: Tensor, obs: Tensor, expected_num_pos: float) -> Tensor:
    """``loss_epr``."""
    preds = torch.sigmoid(z)
    loss_mtx = torch.zeros_like(obs)
    loss_mtx[obs == 1] = neg_log(preds[obs == 1])
    return reduce(loss_mtx, expected_positive_regularizer(preds, expected_num_pos) / (z.shape[1] ** 2))


def loss_role(z: Tensor, obs: Tensor, label_logits: Tensor, expected_num_pos: float) -> Tensor:
    """``loss_role`` (both halves: the classifier's and the label estimator's)."""
    preds, est = torch.sigmoid(z), torch.sigmoid(label_logits)
    c = z.shape[1]
    pos_1 = torch.zeros_like(obs)
    pos_1[obs == 1] = neg_log(preds[obs == 1])
    est_d = est.detach()
    cross_1 = est_d * neg_log(preds) + (1.0 - est_d) * neg_log(1.0 - preds)
    reg_1 = expected_positive_regularizer(preds, expected_num_pos) / (c**2)
    pos_2 = torch.zeros_like(obs)
    pos_2[obs == 1] = neg_log(est[obs == 1])
    preds_d = preds.detach()
    cross_2 = preds_d * neg_log(est) + (1.0 - preds_d) * neg_log(1.0 - est)
    reg_2 = expected_positive_regularizer(est, expected_num_pos) / (c**2)
    loss_mtx = 0.5 * (pos_1 + pos_2)
    loss_mtx += 0.5 * (cross_1 + cross_2)
    return reduce(loss_mtx, 0.5 * (reg_1 + reg_2))
