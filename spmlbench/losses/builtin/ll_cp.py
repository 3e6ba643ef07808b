"""Large loss permanent correction, LL-Cp (Kim et al., CVPR 2022): the largest unobserved AN losses become
observed positives for the rest of training.

The loss keeps a corrected observed matrix (M, N, C). Per batch: the AN loss against the stored
(corrected) rows plus this batch's selected large losses, which are then stored; k is constant,
``ceil(B C delta_rel / 100)`` from epoch 2 (``_large_loss.py``). Rows are recorded lazily from the first
batch that shows them, or at once with ``init_state(observed_train)``; once a row is stored, the
``observed`` argument for it is ignored in favour of the stored row.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from spmlbench.losses.base import BatchedLoss, ObservedStore, RecordsObserved
from spmlbench.losses.builtin._large_loss import LARGE_LOSS, assume_negative, large_losses
from spmlbench.hparams import HParams
from spmlbench.losses.plain import Step
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class LLCpParams(HParams):
    """LL-Cp: ``delta_rel`` in percent (default 0.1, a constant k)."""

    loss = "ll_cp"
    delta_rel: float = 0.1

    def check(self) -> None:
        self.require("delta_rel", 0.0 < self.delta_rel < 100.0, "in (0, 100) (percent)")


def ll_cp_flips(hp: LLCpParams, logits: Tensor, observed: Tensor, step: Step) -> Tensor | None:
    """The entries this batch corrects for good (None in epoch 1)."""
    return large_losses(logits, observed, step, hp.delta_rel, permanent=True)


def ll_cp_loss(hp: LLCpParams, logits: Tensor, observed: Tensor, step: Step) -> Tensor:
    """AN per entry against the corrected ``observed`` rows plus this batch's flips."""
    chosen = ll_cp_flips(hp, logits, observed, step)
    return assume_negative(logits, observed if chosen is None else observed | chosen)


class LLCpLoss(RecordsObserved, BatchedLoss):
    """[ll_cp] M configs with their corrected observed matrices (``store`` | ``corrected``)."""

    hparams_cls = LLCpParams
    needs_rows = True
    mode = "permanent"

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
        configs = self.const("config_rows", range(self.num_configs), torch.long, dev, (-1, 1))
        return (configs, idx), self.store.observed[idx]

    def observed_for(self, s: Tensor, index: Tensor | None) -> Tensor:
        """The stored (corrected) observed rows (M, B, C) of the batch, after recording new rows."""
        assert index is not None
        self.store.record(s, index)
        key, original = self._rows(index)
        stored = original | self.corrected[key]
        return stored if stored.device == s.device else stored.to(s.device)

    @torch.no_grad()
    def store_flips(self, chosen: Tensor, index: Tensor | None) -> None:
        """Make the (M, B, C) ``chosen`` entries observed positives from now on."""
        assert index is not None
        key = self._rows(index)[0]
        dev = self.corrected.device
        self.corrected[key] = self.corrected[key] | (chosen if chosen.device == dev else chosen.to(dev))

    def observed_matrix(self) -> Tensor:
        """The current corrected observed matrix (M, N, C) bool (original positives plus flips)."""
        return self.store.observed.unsqueeze(0) | self.corrected

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-config values (M,) of :func:`ll_cp_loss` on the stored rows; this batch's flips are stored."""
        z, s = self.check_inputs(logits, observed, index)
        s_eff = self.observed_for(s, index)
        step = Step(self.epoch, self.num_epochs, True, index, self.num_classes)
        values, flips = [], []
        for m, hp in enumerate(self.hparams):
            rows = s_eff[m if s_eff.shape[0] > 1 else 0]
            chosen = ll_cp_flips(hp, z[m], rows, step)  # type: ignore[arg-type]
            flips.append(torch.zeros_like(rows) if chosen is None else chosen)
            values.append(ll_cp_loss(hp, z[m], rows, step).mean())  # type: ignore[arg-type]
        self.store_flips(torch.stack(flips), index)
        return torch.stack(values)


register_loss("ll_cp", params=LLCpParams, formula=ll_cp_loss, title="Large loss permanent correction",
              **LARGE_LOSS, stateful=True, scheduled=True, batched=LLCpLoss,
              fused="spmlbench.losses.fused.ll:LLCpLoss", step_cost=2.1, order=90,
              reference="snucml/LargeLossMatters@5025d16:losses.py", version=2)
