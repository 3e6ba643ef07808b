"""Zhou et al. 2022 (ECCV), "Acknowledging the Unknown": EM and EM-APL.

EM: s = 1: ``nlog(p)``; s = 0: ``-alpha H(p)``, ``H(p) = p nlog(p) + (1-p) nlog(1-p)``, eps 1e-5.

EM-APL adds asymmetric pseudo-labelling. After each epoch ``e >= T_w`` (``warmup_epoch``) the
trainer calls ``end_epoch(predict_train)``; for every class c, among training entries that are
unobserved and not yet pseudo-labelled, the ``int(theta * U_c / (T - T_w))`` entries with the
lowest p become soft negatives with target ``t = p`` (p at assignment, stored, so detached).
``U_c`` counts unobserved entries of class c in the training observed matrix; ``T`` is the
``num_epochs`` given to ``start_epoch`` (no pseudo-labels when ``T <= T_w``). Ties in p are broken
by the lower row index. Pseudo-labelled entries contribute ``beta (t nlog(p) + (1-t) nlog(1-p))``.
The training observed matrix is recorded from batches as they come (every row is seen in epoch
1) or given at once with ``init_state``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.losses.base import BatchedLoss, ObservedStore, RecordsObserved, PredictFn, nlog, rows_of
from spmlbench.losses.hparams import HParams

EM_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class EMParams(HParams):
    """EM: ``alpha`` per dataset (fallback without a dataset: 0.1, the COCO/NUS value)."""

    loss = "em"
    alpha: float = 0.1
    eps: float = EM_EPS

    def check(self) -> None:
        self.nonnegative("alpha")
        self.positive("eps")


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


def em_negative(p: Tensor, pn: Tensor, alpha: Tensor, eps: Tensor) -> Tensor:
    """``-alpha * H(p)`` with ``pn = 1 - p``."""
    return -alpha * (p * nlog(p, eps) + pn * nlog(pn, eps))


class EMLoss(BatchedLoss):
    """[em] entropy maximisation on unobserved entries."""

    hparams_cls = EMParams

    def loss_matrix(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        eps = self.col("eps", z)
        p, pn = torch.sigmoid(z), torch.sigmoid(-z)
        return torch.where(s, nlog(p, eps), em_negative(p, pn, self.col("alpha", z), eps))


class EMAPLLoss(RecordsObserved, BatchedLoss):
    """[em_apl] EM plus asymmetric pseudo-labelling (soft negatives that accumulate)."""

    hparams_cls = EMAPLParams
    needs_rows = True

    def __init__(self, hparams: Any, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)
        assert num_train is not None
        self.store = ObservedStore(num_train, num_classes)
        shape = (self.num_configs, num_train, num_classes)
        self.register_buffer("pseudo", torch.zeros(shape, dtype=torch.bool))
        self.register_buffer("target", torch.zeros(shape))

    def loss_matrix(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        assert index is not None
        self.store.record(s, index)
        pseudo = rows_of(self.pseudo, index).to(z.device)
        t = rows_of(self.target, index).to(device=z.device, dtype=z.dtype)
        eps = self.col("eps", z)
        p, pn = torch.sigmoid(z), torch.sigmoid(-z)
        lp, ln = nlog(p, eps), nlog(pn, eps)
        soft = self.col("beta", z) * (t * lp + (1 - t) * ln)
        unobs = torch.where(pseudo, soft, em_negative(p, pn, self.col("alpha", z), eps))
        return torch.where(s, lp, unobs)

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
