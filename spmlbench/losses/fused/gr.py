"""Fused value-and-gradient form of the GR loss (Chen et al., IJCAI 2024; an optional accelerator).

The formula, the schedule and the switches are in ``spmlbench/losses/builtin/gr.py``. Here the current
``w, b, mu, sigma`` are (M,) float64 buffers set by ``start_epoch``; ``p^q`` is evaluated as
``exp(q logsigmoid(z))`` (finite gradients at p = 0, 1), and the B x C mean and its logit gradient (k, v
constant) in one fused step (:func:`~spmlbench.losses.base.entry_mean`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from spmlbench.losses.base import EntryLoss, SingleLoss
from spmlbench.losses.builtin.gr import GRParams, gr_schedule


class GRLossBatched(EntryLoss):
    """[gr] batched form; current ``w, b, mu, sigma`` are (M,) float64 buffers."""


    hparams_cls = GRParams

    def __init__(self, hparams: Any, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)
        init = [(h.beta[0], h.beta[2], h.alpha[0], h.alpha[1]) for h in self.hparams]  # type: ignore[attr-defined]
        for i, name in enumerate(("w", "b", "mu", "sigma")):
            self.register_buffer(name, torch.tensor([row[i] for row in init], dtype=torch.float64))

    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        super().start_epoch(epoch, num_epochs)
        rows = [gr_schedule(h, epoch, num_epochs) for h in self.hparams]  # type: ignore[arg-type]
        for i, name in enumerate(("w", "b", "mu", "sigma")):
            getattr(self, name).copy_(torch.tensor([r[i] for r in rows], dtype=torch.float64))
        self.clear_caches()  # the schedule columns converted for the step are rebuilt once

    def current(self) -> dict[str, Tensor]:
        """The schedule values in effect: ``{"w", "b", "mu", "sigma"}`` -> (M,) float64."""
        return {n: getattr(self, n).clone() for n in ("w", "b", "mu", "sigma")}

    def _shaped(self, name: str, like: Tensor, dims: int) -> Tensor:
        """Schedule buffer ``name`` in ``like``'s dtype/device as (M, 1, ...), converted once per epoch."""
        ck = ("sched", name, like.dtype, like.device, dims)
        t = self._const_cache.get(ck)
        if t is None:
            t = getattr(self, name).to(device=like.device, dtype=like.dtype).view(-1, *([1] * dims))
            self._const_cache[ck] = t
        return t

    def _two_var(self, like: Tensor, dims: int) -> Tensor:
        """``2 * sigma**2`` of the current epoch, computed once per epoch and dtype/device."""
        ck = ("two_var", like.dtype, like.device, dims)
        t = self._const_cache.get(ck)
        if t is None:
            t = 2 * self._shaped("sigma", like, dims) ** 2
            self._const_cache[ck] = t
        return t

    def _switch(self, name: str, like: Tensor, dims: int) -> Tensor | None:
        """Switch ``name`` as an (M, 1, ...) bool mask; None when it is on for every config."""
        ck = ("switch", name, like.device, dims)
        if ck not in self._const_cache:
            on = self.values(name)
            self._const_cache[ck] = None if all(on) else self.const(name, on, torch.bool, like.device, (-1, *([1] * dims)))
        return self._const_cache[ck]

    def _kv_cols(self, like: Tensor, dims: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(w, b', mu, -2 sigma^2')`` as (M, 1, ...) columns, once per epoch and dtype/device.

        The switches are folded in: ``b' = -inf`` where ``use_k`` is off (``sigmoid(w p - inf) = 0``
        exactly) and ``-2 sigma^2' = -inf`` where ``use_v`` is off (``exp(x / -inf) = exp(-0) = 1``
        exactly, x >= 0 finite), so k and v need no mask per step.
        """
        ck = ("kv_cols", like.dtype, like.device, dims)
        hit = self._const_cache.get(ck)
        if hit is None:
            b, neg_two_var = self._shaped("b", like, dims), -self._two_var(like, dims)
            k_on, v_on = self._switch("use_k", like, dims), self._switch("use_v", like, dims)
            if k_on is not None:
                b = torch.where(k_on, b, -math.inf)
            if v_on is not None:
                neg_two_var = torch.where(v_on, neg_two_var, -math.inf)
            hit = (self._shaped("w", like, dims), b, self._shaped("mu", like, dims), neg_two_var)
            self._const_cache[ck] = hit
        return hit

    def _k(self, p: Tensor, dims: int) -> Tensor:
        w, b = self._kv_cols(p, dims)[:2]
        return torch.sigmoid(torch.addcmul(b, w, p))  # sigmoid(w p + b); 0 where use_k is off

    def _v(self, p: Tensor, dims: int) -> Tensor:
        mu, neg_two_var = self._kv_cols(p, dims)[2:]
        d = p - mu
        return torch.exp(d * d / neg_two_var)  # exp(-(p - mu)^2 / (2 sigma^2)); 1 where use_v is off

    def k(self, p: Tensor) -> Tensor:
        """Soft pseudo-label ``k(p)`` per config: p of any shape S -> (M, *S)."""
        return self._k(p.unsqueeze(0), p.dim())

    def v(self, p: Tensor) -> Tensor:
        """Reweighting ``v(p)`` per config: p of any shape S -> (M, *S)."""
        return self._v(p.unsqueeze(0), p.dim())

    def _q(self, name: str, like: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(q_safe, -q_safe, zero)`` for ``q2``/``q3``: q with zeros replaced by 1, its negative, and the
        (M, 1, 1) zero mask (None when no config has q = 0; decided on the host from the hyperparameters)."""
        ck = ("q", name, like.dtype, like.device)
        hit = self._const_cache.get(ck)
        if hit is None:
            q = self.col(name, like)
            zero = q == 0 if any(v == 0 for v in self.values(name)) else None
            q_safe = q if zero is None else torch.where(zero, torch.ones_like(q), q)
            hit = (q_safe, -q_safe, zero)
            self._const_cache[ck] = hit
        return hit


    def entries(self, z: Tensor, need_grad: bool, s: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-entry loss (M, B, C) and, if ``need_grad``, its derivative in z with k, v constant:

        ``dL1 = -(1-p) p / (p + eps)``, ``dL2 = -(1-p) p^q2``, ``dL3 = p (1-p)^q3``.
        """
        nz = -z
        p, pn = torch.sigmoid(z), torch.sigmoid(nz)  # pn = 1 - p, accurate near p = 1
        k, v = self._k(p, 2), self._v(p, 2)
        p_eps = p + self.col("eps", z)
        e2, l2 = _robust_log(F.logsigmoid(z), *self._q("q2", z))  # (1 - p^q2) / q2, -log p at q2 = 0
        e3, l3 = _robust_log(F.logsigmoid(nz), *self._q("q3", z))  # (1 - (1-p)^q3) / q3, -log(1-p) at q3 = 0
        mat = torch.where(s, -torch.log(p_eps), v * torch.lerp(l3, l2, k))  # lerp: k l2 + (1 - k) l3
        if not need_grad:
            return mat, None
        npn = -pn
        d2 = torch.addcmul(npn, e2, npn)  # -(1-p) (1 + (p^q2 - 1))
        d3 = torch.addcmul(p, e3, p)  # p (1 + ((1-p)^q3 - 1))
        return mat, torch.where(s, npn * (p / p_eps), v * torch.lerp(d3, d2, k))


def _robust_log(log_x: Tensor, q_safe: Tensor, neg_q_safe: Tensor, zero: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(x^q - 1, (1 - x^q) / q)`` from ``log x``; ``(0, -log x)`` (the q -> 0 limit) where ``zero`` (q == 0).

    ``q_safe`` is q with its zeros replaced by 1 (``neg_q_safe`` = -q_safe); ``zero`` None means no
    config has q = 0. ``x^q - 1`` is ``expm1(q log x)``; the value is ``-expm1(q log x) / q``.
    """
    em1 = torch.expm1(q_safe * log_x)
    value = em1 / neg_q_safe
    if zero is None:
        return em1, value
    return em1.masked_fill_(zero, 0.0), torch.where(zero, -log_x, value)


class GRLoss(SingleLoss):
    """[gr] one config, with its schedule values and k/v functions exposed."""

    batched: GRLossBatched

    def current(self) -> dict[str, float]:
        """``{"w", "b", "mu", "sigma"}`` in effect now (floats)."""
        return {n: float(t[0]) for n, t in self.batched.current().items()}

    def k(self, p: Tensor) -> Tensor:
        """``k(p)`` (same shape as p)."""
        return self.batched.k(p)[0]

    def v(self, p: Tensor) -> Tensor:
        """``v(p)`` (same shape as p)."""
        return self.batched.v(p)[0]
