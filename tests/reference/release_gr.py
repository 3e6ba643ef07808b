"""GR (Chen et al., IJCAI 2024) and AEVLP's GPR loss (Tran et al., ICCV 2025) as released.

- GR: yan4xi1/GRLoss@5e13f7f ``losses.py`` (``GR_loss``, ``neg_log`` eps 1e-7, ``loss1``, ``loss2``),
  ``models.py`` (``KFunction``, ``VFunction``), ``train.py`` (the per-epoch schedule of w, b, mu, sigma).
  No licence: an independent transcription of the code's behaviour.
- AEVLP: Fsoft-AIC/AEVLP@0bad82a ``losses.py`` (``GPR_loss`` with ``use_pl``, ``expected_positive_regularizer``),
  ``train.py`` (the same schedule, ``linear_init`` 0). CC BY-NC-SA 4.0: an independent transcription, not a copy.

What they compute, with ``p = sigmoid(z)`` and ``K``, ``V`` from the detached p: observed ``-log(p + 1e-7)``;
unlabelled ``V [K (1 - p^q2) / q2 + (1 - K) (1 - (1 - p)^q3) / q3]`` with ``1 - p`` computed as such; AEVLP's
pseudo positives ``(1 - V') [rho nlog(p) + (1 - rho) nlog(1 - p)]`` with ``V`` clipped to
``[1 - lam_1, 1 - lam_2]``; mean over B x C, plus AEVLP's ``reg (mean_b sum_c p - k)^2 / C^2``.
Changes: the release's in-place writes to ``V[mask]`` become a ``where``; the ``batch`` / ``P`` dictionaries
are plain arguments.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-7


def schedule(beta: tuple[float, ...], alpha: tuple[float, ...], epoch: int, num_epochs: int,
             n: int = 0) -> tuple[float, float, float, float]:
    """``(w, b, mu, sigma)`` of 1-based ``epoch`` (``n`` linear-init epochs)."""
    w0, wmax, b0, bmax = beta
    mu0, s0, mumax, smax = alpha
    lag, now = max(epoch - n - 1, 0) / (num_epochs - n), max(epoch - n, 0) / (num_epochs - n)
    return w0 + (wmax - w0) * lag, b0 + (bmax - b0) * lag, mu0 + (mumax - mu0) * now, s0 + (smax - s0) * now


def _parts(z: Tensor, sched: tuple[float, float, float, float]) -> tuple[Tensor, Tensor, Tensor]:
    w, b, mu, sigma = sched
    preds = torch.sigmoid(z)
    pd = preds.detach()
    k = 1 / (1 + torch.exp(-(w * pd + b)))
    v = torch.exp(-0.5 * ((pd - mu) / sigma) ** 2)
    return preds, k, v


def _unlabelled(p: Tensor, k: Tensor, v: Tensor, q2: float, q3: float) -> Tensor:
    return v * (k * (1 - torch.pow(p, q2)) / q2 + (1 - k) * (1 - torch.pow(1 - p, q3)) / q3)


def gr(z: Tensor, obs: Tensor, q2: float, q3: float, sched: tuple[float, float, float, float]) -> Tensor:
    """``GR_loss``."""
    p, k, v = _parts(z, sched)
    out = torch.where(obs == 1, -torch.log(p + EPS), _unlabelled(p, k, v, q2, q3))
    return out.mean()


def gpr(z: Tensor, obs: Tensor, pl: Tensor, sched: tuple[float, float, float, float], *, q2: float, q3: float,
        lam: tuple[float, float], rho: float, reg: float, expected_num_pos: float) -> Tensor:
    """``GPR_loss`` with ``use_pl`` (pseudo-labels ``pl`` in {-1, 0, 1})."""
    p, k, v = _parts(z, sched)
    final = torch.where(obs == 0, pl, obs)
    out = torch.where(obs == 1, -torch.log(p + EPS), torch.zeros_like(p))
    out = torch.where(final == 0, _unlabelled(p, k, v, q2, q3), out)
    pseudo = (obs == 0) & (pl == 1)
    vc = torch.where(v > 1 - lam[0], v, torch.full_like(v, 1 - lam[0]))
    vc = torch.where(vc < 1 - lam[1], vc, torch.full_like(v, 1 - lam[1]))
    out = torch.where(pseudo, (1 - vc) * (rho * -torch.log(p + EPS) + (1 - rho) * -torch.log(1 - p + EPS)), out)
    out = torch.where(final == -1, v * -torch.log(1 - p + EPS), out)
    penalty = (p.sum(1).mean(0) - expected_num_pos) ** 2 / (z.shape[1] ** 2)
    return out.mean() + reg * penalty
