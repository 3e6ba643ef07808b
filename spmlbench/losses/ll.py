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
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from spmlbench.losses.base import BatchedLoss, ObservedStore, RecordsObserved, mean_bc, rows_of, set_rows
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


class LLRLoss(BatchedLoss):
    """[ll_r] large-loss rejection."""

    hparams_cls = LLRParams
    mode: ClassVar[str] = "reject"

    def num_selected(self, batch: int) -> list[int]:
        """k per config for a batch of ``batch`` rows at the current epoch."""
        return [ll_num_selected(batch, self.num_classes, self.epoch, d, self.mode == "permanent")
                for d in self.values("delta_rel")]

    def selection(self, batch: int, device: torch.device) -> tuple[int, Tensor, Tensor] | None:
        """``(max k, k - 1 clamped at 0 (M, 1) long, k > 0 (M, 1) bool)`` on ``device``; None if every k is 0.

        Computed on the host from (B, epoch, delta_rel) and cached: the per-batch selection then runs
        entirely on the device.
        """
        ck = ("select", batch, self.epoch, device)
        if ck not in self._const_cache:
            ks = self.num_selected(batch)
            hit = None
            if max(ks) > 0:
                kk = torch.tensor(ks, dtype=torch.long, device=device).view(-1, 1)
                hit = (max(ks), (kk - 1).clamp(min=0), kk > 0)
            self._const_cache[ck] = hit
        return self._const_cache[ck]

    def observed_for(self, s: Tensor, index: Tensor | None) -> Tensor:
        """The observed mask to use: (1 or M, B, C) as given; LL-Cp returns its stored (M, B, C)."""
        return s

    def select(self, loss_an: Tensor, s_eff: Tensor) -> Tensor:
        """(M, B, C) bool: unobserved entries with AN loss >= the k-th largest unobserved AN loss."""
        m, b, c = loss_an.shape
        sel = self.selection(b, loss_an.device)
        if sel is None:
            return torch.zeros(loss_an.shape, dtype=torch.bool, device=loss_an.device)
        k_max, k_at, k_pos = sel
        unobs = ~s_eff.expand(m, b, c)
        ranked = torch.where(unobs, loss_an.detach(), 0.0).reshape(m, b * c)
        thr = torch.topk(ranked, k_max, dim=1).values.gather(1, k_at)
        chosen = (ranked >= thr) & k_pos
        return chosen.view(m, b, c) & unobs

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        z, s = self.check_inputs(logits, observed, index)
        s_eff = self.observed_for(s, index)
        to_pos, to_neg = F.softplus(-z), F.softplus(z)
        loss_an = torch.where(s_eff, to_pos, to_neg)
        if self.selection(z.shape[1], z.device) is None:  # epoch 1 (k = 0): plain AN, nothing to store
            return mean_bc(loss_an)
        chosen = self.select(loss_an, s_eff)
        if self.mode == "reject":
            mat = torch.where(chosen, 0.0, loss_an)
        else:
            mat = torch.where(chosen, to_pos, loss_an)
        if self.mode == "permanent":
            self.store_flips(chosen, index)
        return mean_bc(mat)

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

    def observed_for(self, s: Tensor, index: Tensor | None) -> Tensor:
        assert index is not None
        self.store.record(s, index)
        idx = index.to(self.corrected.device)
        original = self.store.observed[idx]  # (B, C) or (M, B, C)
        stored = (original if idx.dim() == 2 else original.unsqueeze(0)) | rows_of(self.corrected, idx)
        return stored.to(s.device)

    @torch.no_grad()
    def store_flips(self, chosen: Tensor, index: Tensor | None) -> None:
        assert index is not None
        set_rows(self.corrected, index, rows_of(self.corrected, index) | chosen.to(self.corrected.device))

    def observed_matrix(self) -> Tensor:
        """The current corrected observed matrix (M, N, C) bool (original positives plus flips)."""
        return self.store.observed.unsqueeze(0) | self.corrected
