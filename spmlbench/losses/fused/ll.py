"""Fused value-and-gradient forms of the Large Loss Matters losses (optional accelerators).

The formulas are in ``spmlbench/losses/builtin/{ll_r,ll_ct,ll_cp}.py`` (and ``_large_loss.py``); these
classes evaluate the B x C mean and its logit gradient (autograd's ``softplus`` derivative, threshold
included) in one fused step (``entry_mean``), with the selection computed on the device from k values
cached per (batch size, epoch). LL-Cp keeps its state in the built-in :class:`~spmlbench.losses.builtin.ll_cp.LLCpLoss`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from spmlbench.losses.base import EntryLoss, entry_mean
from spmlbench.losses.builtin import ll_cp
from spmlbench.losses.builtin._large_loss import ll_num_selected
from spmlbench.losses.builtin.ll_ct import LLCtParams
from spmlbench.losses.builtin.ll_r import LLRParams


# d softplus(y) / dy times a gradient, as autograd computes it (exp(y) / (exp(y) + 1), 1 above the threshold)
_softplus_grad = torch.ops.aten.softplus_backward.default


class LLRLoss(EntryLoss):
    """[ll_r] large-loss rejection."""


    hparams_cls = LLRParams
    mode: ClassVar[str] = "reject"

    def num_selected(self, batch: int) -> list[int]:
        """k per config for a batch of ``batch`` rows at the current epoch."""
        return [ll_num_selected(batch, self.num_classes, self.epoch, d, self.mode == "permanent")
                for d in self.values("delta_rel")]

    def selection(self, batch: int, device: torch.device) -> tuple[int, Tensor, Tensor | None] | None:
        """``(max k, k - 1 clamped at 0 (M, 1) long, k > 0 (M, 1) bool or None if every k > 0)`` on
        ``device``; None if every k is 0.

        Computed on the host from (B, epoch, delta_rel) and cached: the per-batch selection then runs
        entirely on the device.
        """
        ck = ("select", batch, self.epoch, device)
        if ck not in self._const_cache:
            ks = self.num_selected(batch)
            hit = None
            if max(ks) > 0:
                kk = torch.tensor(ks, dtype=torch.long, device=device).view(-1, 1)
                hit = (max(ks), (kk - 1).clamp(min=0), None if min(ks) > 0 else kk > 0)
            self._const_cache[ck] = hit
        return self._const_cache[ck]

    def observed_for(self, s: Tensor, index: Tensor | None) -> Tensor:
        """The observed mask to use: (1 or M, B, C) as given; LL-Cp returns its stored (M, B, C)."""
        return s

    def select(self, loss_an: Tensor, s_eff: Tensor) -> Tensor | None:
        """(M, B, C) bool: unobserved entries with AN loss >= the k-th largest unobserved AN loss
        (observed entries rank as 0); None when every k is 0."""
        m, b, c = loss_an.shape
        sel = self.selection(b, loss_an.device)
        if sel is None:
            return None
        k_max, k_at, k_pos = sel
        ranked = torch.where(s_eff, self._zero(loss_an), loss_an).view(m, b * c)
        thr = torch.topk(ranked, k_max, dim=1).values.gather(1, k_at)
        chosen = ranked >= thr
        if k_pos is not None:
            chosen &= k_pos
        return chosen.view(m, b, c) > s_eff  # bool a > b is a & ~b: observed entries are never chosen

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        z, s = self.check_inputs(logits, observed, index)
        return entry_mean(self, z, self.entries, self.observed_for(s, index), index)

    def entries(self, z: Tensor, need_grad: bool, s_eff: Tensor,  # type: ignore[override]
                index: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Per-entry loss (M, B, C) (AN, with the selected entries rejected or corrected) and, if
        ``need_grad``, its derivative in z; LL-Cp stores the selected entries."""
        nz = -z
        y = torch.where(s_eff, nz, z)  # AN: softplus(-z) on observed, softplus(z) on unobserved entries
        mat = loss_an = F.softplus(y)
        chosen = self.select(loss_an, s_eff)
        flip = s_eff  # entries whose loss is softplus(-z)
        if chosen is not None:
            if self.mode == "reject":
                mat = torch.where(chosen, self._zero(z), loss_an)
            else:  # correction: -log p = softplus(-z) on the chosen (unobserved) entries
                y = torch.where(chosen, nz, y)
                mat, flip = F.softplus(y), s_eff | chosen
            if self.mode == "permanent":
                self.store_flips(chosen, index)
        if not need_grad:
            return mat, None
        dsp = _softplus_grad(self.const("one", (1.0,), z.dtype, z.device, ()), y, 1.0, 20.0)  # autograd's rule
        dmat = torch.where(flip, -dsp, dsp)
        if chosen is not None and self.mode == "reject":
            dmat.masked_fill_(chosen, 0.0)
        return mat, dmat

    def _zero(self, like: Tensor) -> Tensor:
        """A cached 0-dim zero of ``like``'s dtype/device (no scalar conversion per op)."""
        return self.const("zero", (0.0,), like.dtype, like.device, ())

    def store_flips(self, chosen: Tensor, index: Tensor | None) -> None:
        """LL-Cp only."""


class LLCtLoss(LLRLoss):
    """[ll_ct] large-loss temporary correction (this batch only)."""

    hparams_cls = LLCtParams
    mode = "temporary"


class LLCpLoss(ll_cp.LLCpLoss, LLRLoss):
    """[ll_cp] large-loss permanent correction: the state of the built-in class, the fused step of LL-R."""

    fused_grad = True
    forward = LLRLoss.forward
