"""ASL, Hill and SPLC as released.

- ASL (Ben-Baruch et al., ICCV 2021): Alibaba-MIIL/ASL@8c9e0bd:src/loss_functions/losses.py ``AsymmetricLoss``
  (MIT licence, Copyright (c) 2020 Alibaba-MIIL).
- Hill and SPLC (Zhang et al., 2021): xinyu1205/robust-loss-mlml@dcfa4d5:src/loss_functions/losses.py ``Hill``,
  ``SPLC`` (MIT licence, Copyright (c) 2021 OPPO LLC).

Changes: the modules are functions; the releases sum over B x C (``reduction='sum'``), the suite averages, so
these return the sum divided by B C; ASL's ``torch.set_grad_enabled(False)`` around its focusing weight is a
``no_grad`` block (the same effect); SPLC's ``torch.tensor(1).cuda()`` is a CPU tensor; SPLC's ``epoch`` is the
release's 0-based epoch (the suite's 1-based ``change_epoch`` is the release's ``change_epoch`` + 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def asl(x: Tensor, y: Tensor, gamma_neg: float, gamma_pos: float, clip: float, eps: float) -> Tensor:
    """``AsymmetricLoss.forward`` (``disable_torch_grad_focal_loss=True``), / (B C)."""
    x_sigmoid = torch.sigmoid(x)
    xs_pos = x_sigmoid
    xs_neg = 1 - x_sigmoid
    if clip is not None and clip > 0:
        xs_neg = (xs_neg + clip).clamp(max=1)
    los_pos = y * torch.log(xs_pos.clamp(min=eps))
    los_neg = (1 - y) * torch.log(xs_neg.clamp(min=eps))
    loss = los_pos + los_neg
    if gamma_neg > 0 or gamma_pos > 0:
        with torch.no_grad():
            pt = xs_pos * y + xs_neg * (1 - y)
            one_sided_w = torch.pow(1 - pt, gamma_pos * y + gamma_neg * (1 - y))
        loss = loss * one_sided_w
    return -loss.sum() / y.numel()


def hill(logits: Tensor, targets: Tensor, lamb: float, margin: float, gamma: float) -> Tensor:
    """``Hill.forward``, / (B C)."""
    pred_pos = torch.sigmoid(logits - margin)
    pred_neg = torch.sigmoid(logits)
    pt = (1 - pred_pos) * targets + (1 - targets)
    focal_weight = pt**gamma
    los_pos = targets * torch.log(pred_pos)
    los_neg = (1 - targets) * -(lamb - pred_neg) * pred_neg**2
    loss = -(los_pos + los_neg)
    loss = loss * focal_weight
    return loss.sum() / targets.numel()


def splc(logits: Tensor, targets: Tensor, epoch: int, tau: float, change_epoch: int, margin: float,
         gamma: float) -> Tensor:
    """``SPLC.forward`` (0-based ``epoch`` and ``change_epoch``), / (B C)."""
    n = targets.numel()
    logits = torch.where(targets == 1, logits - margin, logits)
    if epoch >= change_epoch:
        targets = torch.where(torch.sigmoid(logits) > tau, torch.tensor(1, dtype=targets.dtype), targets)
    pred = torch.sigmoid(logits)
    pt = (1 - pred) * targets + pred * (1 - targets)
    focal_weight = pt**gamma
    los_pos = targets * F.logsigmoid(logits)
    los_neg = (1 - targets) * F.logsigmoid(-logits)
    loss = -(los_pos + los_neg)
    loss = loss * focal_weight
    return loss.sum() / n
