"""Kim et al. 2022 (CVPR), "Large Loss Matters": LL-R, LL-Ct, LL-Cp.

Base loss: assume-negative BCE on logits (``softplus``; the reference uses
``binary_cross_entropy_with_logits``, so there is no eps). Epoch 1 is unmodified. From epoch
``e >= 2``, per batch, the unobserved entries whose AN loss is ``>=`` the k-th largest unobserved
AN loss are rejected (LL-R: loss 0) or corrected (LL-Ct/Cp: ``-log p`` instead).

k = ceil(B C (e - 1) delta_rel / 100) for LL-R/Ct and ceil(B C delta_rel / 100) for LL-Cp, with
``B`` the actual batch size; the product is rounded to 9 decimals before ``ceil`` so that float
noise (e.g. 0.1 * 3) cannot add one. Selection is restricted to unobserved entries (observed
positives are never rejected or "corrected", even when the k-th value is 0).

LL-Cp keeps a corrected observed matrix (M, N, C): selected entries become observed positives
for all later batches and epochs. It is filled lazily from the first batch that shows a row, or
at once with ``init_state(observed_train)``; once a row is stored, the ``observed`` argument for
that row is ignored in favour of the stored (corrected) row.

The B x C mean and its logit gradient (autograd's ``softplus`` derivative, threshold included)
are evaluated in one fused step (``entry_mean``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from spmlbench.losses.base import EntryLoss, ObservedStore, RecordsObserved, entry_mean
from spmlbench.losses.hparams import HParams


@dataclasses.dataclass(frozen=True)
class LLRParams(HParams):
    """LL-R: ``delta_rel`` in percent per epoch (default 0.5)."""

    loss = "ll_r"
    delta_rel: float = 0.5

    def check(self) -> None:
        self.require("delta_rel", 0.0 < self.delta_rel < 100.0, "in (0, 100) (percent)")


@dataclasses.dataclass(frozen=True)
class LLCtParams(LLRParams):
    """LL-Ct: default ``delta_rel`` 0.2."""

    loss = "ll_ct"
    delta_rel: float = 0.2


@dataclasses.dataclass(frozen=True)
class LLCpParams(LLRParams):
    """LL-Cp: default ``delta_rel`` 0.1 (constant k)."""

    loss = "ll_cp"
    delta_rel: float = 0.1


def ll_num_selected(batch: int, num_classes: int, epoch: int, delta_rel: float, permanent: bool) -> int:
    """k for one batch: ``ceil(B C (e-1) delta_rel / 100)`` (LL-Cp: ``ceil(B C delta_rel / 100)``), 0 in epoch 1."""
    if epoch < 2:
        return 0
    factor = 1 if permanent else epoch - 1
    k = math.ceil(round(batch * num_classes * factor * delta_rel / 100.0, 9))
    return min(k, batch * num_classes)


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


class LLCpLoss(RecordsObserved, LLRLoss):
    """[ll_cp] large-loss permanent correction (stored observed matrix, constant k)."""

    hparams_cls = LLCpParams
    mode = "permanent"
    needs_rows = True

    def __init__(self, hparams: Any, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)
        assert num_train is not None
        self.store = ObservedStore(num_train, num_classes)
        self.register_buffer("corrected", torch.zeros(self.num_configs, num_train, num_classes, dtype=torch.bool))

    def _rows(self, index: Tensor) -> tuple[Any, Tensor]:
        """``(key, rows)``: ``self.corrected[key]`` are the (M, B, C) rows of ``index`` (B,) or (M, B)
        (config m's own rows), and ``rows`` the matching (B, C) or (M, B, C) rows of the store."""
        dev = self.corrected.device
        idx = index if index.device == dev else index.to(dev)
        if idx.dim() == 1:
            return (slice(None), idx), self.store.observed[idx]
        return (self.const("config_rows", range(self.num_configs), torch.long, dev, (-1, 1)), idx), self.store.observed[idx]

    def observed_for(self, s: Tensor, index: Tensor | None) -> Tensor:
        assert index is not None
        self.store.record(s, index)
        key, original = self._rows(index)
        stored = original | self.corrected[key]
        return stored if stored.device == s.device else stored.to(s.device)

    @torch.no_grad()
    def store_flips(self, chosen: Tensor, index: Tensor | None) -> None:
        assert index is not None
        key = self._rows(index)[0]
        dev = self.corrected.device
        self.corrected[key] = self.corrected[key] | (chosen if chosen.device == dev else chosen.to(dev))

    def observed_matrix(self) -> Tensor:
        """The current corrected observed matrix (M, N, C) bool (original positives plus flips)."""
        return self.store.observed.unsqueeze(0) | self.corrected
