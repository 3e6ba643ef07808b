"""Entropy maximisation with asymmetric pseudo-labelling, EM-APL (Zhou et al., ECCV 2022).

EM (``em.py``), plus soft negative pseudo-labels that accumulate: after each epoch ``e >= T_w``
(``warmup_epoch``), for every class c, among training entries that are unobserved and not yet
pseudo-labelled, the ``int(theta * U_c / (T - T_w))`` entries with the lowest p become soft negatives
with target ``t = p`` (p at assignment, stored, so detached). ``U_c`` counts unobserved entries of class
c in the training observed matrix; ``T`` is the ``num_epochs`` given to ``start_epoch`` (no pseudo-labels
when ``T <= T_w``); ties in p go to the lower row index. Pseudo-labelled entries contribute
``beta (t nlog(p) + (1 - t) nlog(1 - p))``. The observed matrix is recorded from batches as they come (every
row is seen in epoch 1) or given at once with ``init_state``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.losses.base import BatchedLoss, ObservedStore, PredictFn, RecordsObserved, rows_of
from spmlbench.losses.builtin._cole import nlog
from spmlbench.losses.builtin._em import EM_EPS, EM_PAPER, entropy_maximisation
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class EMAPLParams(HParams):
    """EM-APL: ``alpha``, ``beta``, ``warmup_epoch`` per dataset (fallback: the COCO row), ``theta``."""

    loss = "em_apl"
    alpha: float = 0.1
    beta: float = 0.9
    theta: float = 0.9
    warmup_epoch: int = 5
    eps: float = EM_EPS

    def check(self) -> None:
        self.nonnegative("alpha", "beta")
        self.require("theta", 0.0 <= self.theta <= 1.0, "in [0, 1]")
        self.require("warmup_epoch", self.warmup_epoch >= 1, ">= 1 (1-based epoch)")
        self.positive("eps")


def em_apl_loss(hp: EMAPLParams, logits: Tensor, observed: Tensor, pseudo: Tensor, target: Tensor) -> Tensor:
    """EM per entry, and ``beta (t nlog(p) + (1 - t) nlog(1 - p))`` on the ``pseudo``-labelled entries
    (soft targets ``target``)."""
    p = torch.sigmoid(logits)
    soft = hp.beta * (target * nlog(p, hp.eps) + (1 - target) * nlog(1 - p, hp.eps))
    return torch.where(pseudo & ~observed, soft, entropy_maximisation(p, observed, hp.alpha, hp.eps))


class EMAPLLoss(RecordsObserved, BatchedLoss):
    """[em_apl] M configs with their pseudo-label masks and soft targets (M, N, C)."""

    hparams_cls = EMAPLParams
    needs_rows = True

    def __init__(self, hparams: Any, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)
        assert num_train is not None
        self.store = ObservedStore(num_train, num_classes)
        shape = (self.num_configs, num_train, num_classes)
        self.register_buffer("pseudo", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("target", torch.zeros(shape))

    def batch_state(self, s: Tensor, index: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """Record the batch's observed rows; its pseudo-label masks and targets (M, B, C) on ``like``'s device."""
        self.store.record(s, index)
        pseudo, t = rows_of(self.pseudo, index), rows_of(self.target, index)
        if pseudo.device != like.device or t.dtype != like.dtype:
            pseudo, t = pseudo.to(like.device), t.to(device=like.device, dtype=like.dtype)
        return pseudo, t

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-config values (M,) of :func:`em_apl_loss` (autograd)."""
        z, s = self.check_inputs(logits, observed, index)
        assert index is not None
        pseudo, t = self.batch_state(s, index, z)
        return self.per_config_means(em_apl_loss, z, s, pseudo, t)

    def counts(self, warmup_epoch: int, theta: float) -> list[int]:
        """Per-class number of new pseudo-labels per epoch: ``int(theta * U_c / (T - T_w))``."""
        span = self.num_epochs - warmup_epoch
        unobserved = (~self.store.observed).sum(dim=0).tolist()
        return [int(theta * u / span) if span > 0 else 0 for u in unobserved]

    @torch.no_grad()
    def end_epoch(self, predict_train: PredictFn | None = None) -> None:
        """Pseudo-label after epoch ``e >= T_w``; ``predict_train()`` -> (M, N, C) train logits."""
        active = [m for m, h in enumerate(self.hparams) if self.epoch >= h.warmup_epoch  # type: ignore[attr-defined]
                  and self.num_epochs > h.warmup_epoch]  # type: ignore[attr-defined]
        if not active:
            return
        if predict_train is None:
            raise ConfigError("em_apl: end_epoch needs predict_train (train-set logits) for pseudo-labelling; "
                              "pass loss.end_epoch(predict_train)")
        if not self.store.complete():
            raise RuntimeError("em_apl: training observed matrix incomplete; run a full epoch or call "
                               "loss.init_state(observed_train) first")
        logits = predict_train()
        n, c = self.store.observed.shape
        if tuple(logits.shape) != (self.num_configs, n, c):
            raise ValueError(f"predict_train() must return (M, N, C) = {(self.num_configs, n, c)}, "
                             f"got {tuple(logits.shape)}")
        p = torch.sigmoid(logits.detach().to(self.target.device, torch.float32))
        rank = torch.arange(n, device=p.device).view(n, 1)
        for m in active:
            hp = self.hparams[m]
            want = torch.tensor(self.counts(hp.warmup_epoch, hp.theta), device=p.device)  # type: ignore[attr-defined]
            free = ~self.store.observed & ~self.pseudo[m]
            take = torch.minimum(want, free.sum(dim=0))
            scores = torch.where(free, p[m], torch.full_like(p[m], float("inf")))
            order = torch.sort(scores, dim=0, stable=True).indices  # lowest p first, per class
            new = torch.zeros_like(free).scatter_(0, order, rank < take.view(1, c))
            self.pseudo[m] |= new
            self.target[m] = torch.where(new, p[m], self.target[m])


register_loss("em_apl", params=EMAPLParams, formula=em_apl_loss,
              title="Entropy maximisation + asymmetric pseudo-labelling", **EM_PAPER, stateful=True,
              scheduled=True, batched=EMAPLLoss, fused="spmlbench.losses.fused.em:EMAPLLoss", step_cost=2.2,
              order=110,
              reference="Correr-Zhou/SPML-AckTheUnknown@ae1ccaf:losses.py")
