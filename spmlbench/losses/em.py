"""Zhou et al. 2022 (ECCV), "Acknowledging the Unknown": EM and EM-APL.

EM: s = 1: ``nlog(p)``; s = 0: ``-alpha H(p)``, ``H(p) = p nlog(p) + (1-p) nlog(1-p)``, eps 1e-5.

EM-APL adds asymmetric pseudo-labelling. After each epoch ``e >= T_w`` (``warmup_epoch``) the
trainer calls ``end_epoch(predict_train)``; for every class c, among training entries that are
unobserved and not yet pseudo-labelled, the ``int(theta * U_c / (T - T_w))`` entries with the
lowest p become soft negatives with target ``t = p`` (p at assignment, stored, so detached).
``U_c`` counts unobserved entries of class c in the training observed matrix; ``T`` is the
``num_epochs`` given to ``start_epoch`` (no pseudo-labels when ``T <= T_w``). Ties in p are broken
by the lower row index. Pseudo-labelled entries contribute ``beta (t nlog(p) + (1-t) nlog(1-p))``.
Both losses evaluate the B x C mean and its logit gradient in one fused step (``entry_mean``).
The training observed matrix is recorded from batches as they come (every row is seen in epoch
1) or given at once with ``init_state``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.losses.base import EntryLoss, ObservedStore, PredictFn, RecordsObserved, entry_mean, rows_of
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


def em_entries(z: Tensor, need_grad: bool, s: Tensor, alpha: Tensor, eps: Tensor,
               soft: tuple[Tensor, Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor | None]:
    """EM's per-entry loss (M, B, C) and, if ``need_grad``, its derivative in z.

    ``s``: observed -> ``nlog(p)``; else ``-alpha H(p) = alpha (p log(p+eps) + (1-p) log(1-p+eps))``.
    ``soft = (pseudo, t, -beta, 1)`` (EM-APL; ``1`` a 0-dim tensor): pseudo-labelled entries give
    ``beta (t nlog(p) + (1-t) nlog(1-p)) = -beta (t log(p+eps) + (1-t) log(1-p+eps))`` instead.
    Both are ``c (w1 log(p+eps) + w2 log(1-p+eps))``: ``(c, w1, w2) = (alpha, p, 1-p)`` or ``(-beta, t, 1-t)``.
    """
    p, pn = torch.sigmoid(z), torch.sigmoid(-z)  # pn = 1 - p, accurate near p = 1
    p_eps, pn_eps = p + eps, pn + eps
    lp, ln = torch.log(p_eps), torch.log(pn_eps)  # -nlog(p), -nlog(1-p)
    if soft is None:
        w1, w2, coef = p, pn, alpha
    else:
        pseudo, t, neg_beta, one = soft
        w1, w2, coef = torch.where(pseudo, t, p), torch.where(pseudo, one - t, pn), torch.where(pseudo, neg_beta, alpha)
    mat = torch.where(s, -lp, coef * (w1 * lp + w2 * ln))  # the reference's rounding (no fused multiply-add)
    if not need_grad:
        return mat, None
    # d/dz log(p+eps) = p(1-p)/(p+eps) = (1-p) qp, d/dz log(1-p+eps) = -p qn; the entropy's weights
    # p, 1-p add p(1-p) (lp - ln).
    qp, qn = p / p_eps, pn / pn_eps
    d_obs = -pn * qp
    if soft is None:
        dh = (p * pn) * ((lp - ln) + (qp - qn))
    else:
        dh = ((p * pn) * (lp - ln)).masked_fill_(pseudo, 0.0)
        dh = torch.addcmul(torch.addcmul(dh, w1, pn * qp), w2, p * qn, value=-1)
    return mat, torch.where(s, d_obs, coef * dh)


class EMLoss(EntryLoss):
    """[em] entropy maximisation on unobserved entries."""


    hparams_cls = EMParams

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        z, s = self.check_inputs(logits, observed, index)
        return entry_mean(self, z, em_entries, s, self.col("alpha", z), self.col("eps", z))


class EMAPLLoss(RecordsObserved, EntryLoss):
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

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        z, s = self.check_inputs(logits, observed, index)
        assert index is not None
        self.store.record(s, index)
        pseudo, t = rows_of(self.pseudo, index), rows_of(self.target, index)
        if pseudo.device != z.device or t.dtype != z.dtype:
            pseudo, t = pseudo.to(z.device), t.to(device=z.device, dtype=z.dtype)
        neg_beta = self.const("-beta", [-b for b in self.values("beta")], z.dtype, z.device)
        one = self.const("one", (1.0,), z.dtype, z.device, ())
        return entry_mean(self, z, em_entries, s, self.col("alpha", z), self.col("eps", z), (pseudo, t, neg_beta, one))

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
