"""MIME (Liu et al., ICML 2023), as released (palm-biaoliu/mime@62a0f66: ``loss_VIB``, ``set_pseudo_labeling``).

The model is a query-transformer head with a variational bottleneck (head ``mime``,
``spmlbench.heads.builtin.mime``, whose options ``z_dim``, ``samples`` and ``beta`` join this loss's in method
``mime``; its KL term ``beta * KL(N(mu, sigma) || N(0, 1))`` is added by the head). Per entry, with ``p = sigmoid(z / T)``, the release's
``neg_log(x) = -log(x + eps)`` (``eps = 1e-5``, ``utils/losses.py``) and the training target ``t`` (the observed
labels, then the pseudo-label matrix)::

    t = 1:  -log(p + eps)          t = 0:  -log(1 - p + eps)          t = -1:  0 (ignored)

averaged over B x C (``eps`` caps an entry near 11.5 and gives saturated wrong entries almost no gradient).
Pseudo-labels after each epoch ``e >= warmup_epoch`` (a pass over the training images with the model in train
mode, as released; ``pl_pass = "eval"`` runs it in eval mode): per class ``pi_c = (n_obs_c / N) / E`` and
``n_c = int(pi_c N_pred)``; the ``n_c`` unlabelled predicted images with the highest ``p_c`` are ignored (-1),
observed positives stay 1, the rest 0. ``E = mean_i 1 / |Y_i|`` (a row without positives adds 0): the released
code counts ``E`` and ``n_obs_c / N`` over the whole training file (validation rows included) with the
ground-truth labels (a leak; ``prior = "ground_truth"``); by default here ``E = 1 / expected_num_pos`` (the
dataset's published expected positives per image) and ``n_obs_c / N`` over the training split.

The release's pass uses a ``drop_last`` loader: only ``N_pred = B floor(N / B)`` shuffled rows are predicted
(the others are never ignored), and observed positives are copied for row indices ``< N_pred`` only, so the
last rows lose theirs. ``drop_last_fix = True`` (the default, a departure) predicts every row and keeps every
observed positive; ``False`` reproduces the release (``B`` is the training batch size the loss last saw).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.losses.base import BatchedLoss, PredictFn, rows_of
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss

PRIORS = ("expected", "ground_truth")
PASSES = ("train", "eval")


@dataclasses.dataclass(frozen=True)
class MIMEParams(HParams):
    """MIME's loss: ``warmup_epoch`` per dataset (2; CUB 5), the class prior, the release's ``neg_log`` ``eps``;
    switches ``pl_pass`` (``train`` as released) and ``drop_last_fix`` (the head's options are its own)."""

    loss = "mime"
    warmup_epoch: int = 2
    T: float = 1.0
    prior: str = "expected"
    expected_num_pos: float | None = None
    eps: float = 1e-5
    pl_pass: str = "train"
    drop_last_fix: bool = True

    def check(self) -> None:
        self.require("warmup_epoch", self.warmup_epoch >= 1, ">= 1 (1-based epoch)")
        self.positive("T")
        self.require("prior", self.prior in PRIORS, f"one of {', '.join(PRIORS)}")
        self.require("pl_pass", self.pl_pass in PASSES, f"one of {', '.join(PASSES)}")
        self.nonnegative("eps")
        if self.prior == "expected":
            self.require("expected_num_pos", self.expected_num_pos is not None and self.expected_num_pos > 0,
                         "> 0 (the dataset's expected positives per image)")


def neg_log(x: Tensor, eps: float) -> Tensor:
    """The release's ``neg_log``: ``-log(x + eps)``."""
    return -torch.log(x + eps)


def mime_loss(hp: MIMEParams, logits: Tensor, observed: Tensor, target: Tensor) -> Tensor:
    """Per entry: ``-log(p + eps)`` where ``target == 1``, ``-log(1 - p + eps)`` where 0, 0 where -1, with
    ``p = sigmoid(z / T)`` (``observed`` positives are always 1 in the target)."""
    p = torch.sigmoid(logits / hp.T)
    pos = (target == 1) | observed
    loss = torch.where(pos, neg_log(p, hp.eps), neg_log(1 - p, hp.eps))
    return torch.where(~pos & (target == -1), torch.zeros_like(loss), loss)


def class_prior(observed: Tensor, mean_inverse_cardinality: float) -> Tensor:
    """``pi_c = (n_obs_c / N) / E`` per class (``observed (N, C)``, ``E = mean_i 1 / |Y_i|``)."""
    return observed.double().mean(dim=0) / mean_inverse_cardinality


def mean_inverse_cardinality(labels: Tensor) -> float:
    """``E = mean_i 1 / |Y_i|`` over the rows of ``labels (N, C)``; a row without positives adds 0 (``countE``)."""
    sizes = (labels > 0.5).double().sum(dim=1)
    return float(torch.where(sizes > 0, 1.0 / sizes.clamp_min(1), 0.0).mean())


def ignore_counts(prior: Tensor, n: int) -> list[int]:
    """``n_c = int(pi_c N)`` per class."""
    return [int(v) for v in (prior.double() * n).tolist()]


def pseudo_targets(p: Tensor, observed: Tensor, counts: list[int], predicted: Tensor | None = None) -> Tensor:
    """int8 ``(N, C)``: 1 observed, -1 on the ``counts[c]`` unlabelled ``predicted`` rows (default every row)
    with the highest ``p[:, c]`` (ties: the lower row first), 0 elsewhere."""
    out = observed.to(torch.int8).clone()
    for c, k in enumerate(counts):
        free = ~observed[:, c] if predicted is None else ~observed[:, c] & predicted
        free = torch.nonzero(free).flatten()
        k = min(k, free.numel())
        if k > 0:
            order = torch.sort(-p[free, c], stable=True).indices[:k]
            out[free[order], c] = -1
    return out


class MIMELoss(BatchedLoss):
    """[mime] M configs with their training targets (M, N, C) int8: the observed labels, replaced after each
    epoch ``e >= warmup_epoch`` by the pseudo-label matrix."""

    hparams_cls = MIMEParams
    needs_rows = True

    def __init__(self, hparams: Any, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)
        assert num_train is not None
        self.register_buffer("target", torch.zeros(self.num_configs, num_train, num_classes, dtype=torch.int8))
        self.register_buffer("observed", torch.zeros(num_train, num_classes, dtype=torch.bool))
        self.ground_truth: tuple[float, Tensor] | None = None  # (E, n_obs_c / N) of the train file (ground_truth)
        self.batch_size = 0  # the largest training batch seen (drop_last_fix = False)
        self.seed = 0

    def init_state(self, observed_train: Tensor, seed: Any = 0) -> None:
        """The (N, C) observed matrix: every config's target until its first pseudo-labelling."""
        self.observed.copy_(observed_train.to(self.observed.device) > 0.5)
        self.target.copy_(self.observed.to(torch.int8).expand_as(self.target))
        first = seed[0] if isinstance(seed, (list, tuple)) and seed else seed
        self.seed = int(first) if isinstance(first, int) else 0

    def set_ground_truth(self, clean_file: Tensor, observed_file: Tensor) -> None:
        """``E`` and ``n_obs_c / N`` of the whole training file (train and val rows; ``prior = "ground_truth"``,
        as released: ``utils/countExpected.py`` ``count_estimate_``)."""
        self.ground_truth = (mean_inverse_cardinality(clean_file), (observed_file > 0.5).double().mean(dim=0))

    def predict_in_train_mode(self) -> bool:
        """Whether the pseudo-labelling pass runs the model in train mode (``pl_pass = "train"``, as released)."""
        return self.hparams[0].pl_pass == "train"  # type: ignore[attr-defined]

    def predicted_rows(self, n: int) -> tuple[int, Tensor | None]:
        """``(N_pred, predicted mask or None)``: every row, or with ``drop_last_fix = False`` the release's
        ``B floor(N / B)`` rows of a shuffled pass (seeded by the run's seed and the epoch)."""
        if self.hparams[0].drop_last_fix or self.batch_size < 1:  # type: ignore[attr-defined]
            return n, None
        n_pred = (n // self.batch_size) * self.batch_size
        gen = torch.Generator().manual_seed(self.seed * 1009 + self.epoch)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.randperm(n, generator=gen)[:n_pred]] = True
        return n_pred, mask.to(self.observed.device)

    @torch.no_grad()
    def end_epoch(self, predict_train: PredictFn | None = None) -> None:
        """Pseudo-label after epoch ``e >= warmup_epoch``; ``predict_train()`` -> (M, N, C) train logits."""
        active = [m for m, h in enumerate(self.hparams) if self.epoch >= h.warmup_epoch]  # type: ignore[attr-defined]
        if not active:
            return
        if predict_train is None:
            raise ConfigError("mime: end_epoch needs predict_train (train-set logits) for pseudo-labelling")
        p = torch.sigmoid(predict_train().float().to(self.observed.device))
        n_pred, predicted = self.predicted_rows(self.observed.shape[0])
        for m in active:
            hp = self.hparams[m]
            if hp.prior == "ground_truth":  # type: ignore[attr-defined]
                if self.ground_truth is None:
                    raise ConfigError("mime.prior=ground_truth: the trainer gives no clean labels; use prior=expected")
                prior = self.ground_truth[1].to(self.observed.device) / self.ground_truth[0]
            else:
                prior = class_prior(self.observed, 1.0 / float(hp.expected_num_pos))  # type: ignore[attr-defined]
            self.target[m] = pseudo_targets(p[m], self.observed, ignore_counts(prior, n_pred), predicted)
            if predicted is not None:  # the release copies observed positives for row indices < N_pred only
                self.target[m, n_pred:].clamp_(max=0)

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-config values (M,) of :func:`mime_loss` (autograd; the head adds its KL term)."""
        z, s = self.check_inputs(logits, observed, index)
        assert index is not None
        self.batch_size = max(self.batch_size, int(z.shape[1]))
        t = rows_of(self.target, index).to(z.device)
        if not self.hparams[0].drop_last_fix:  # type: ignore[attr-defined]
            s = s & (t == 1)  # rows whose positive the release's pass dropped train it as 0
        return self.per_config_means(mime_loss, z, s, t)


register_loss("mime", params=MIMEParams, formula=mime_loss, title="MIME: variational query head + prior-based ignoring",
              paper="Liu et al., ICML", year=2023,
              citation="Liu et al. Revisiting Pseudo-Label for Single-Positive Multi-Label Learning (MIME). ICML 2023. "
                       "Code: github.com/palm-biaoliu/mime (62a0f66).",
              stateful=True, scheduled=True, batched=MIMELoss, step_cost=2.0, order=155,
              reference="palm-biaoliu/mime@62a0f66:utils/losses.py", version=2)
