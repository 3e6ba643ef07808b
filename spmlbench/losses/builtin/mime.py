"""MIME (Liu et al., ICML 2023), as released (palm-biaoliu/mime@62a0f66: ``loss_VIB``, ``set_pseudo_labeling``).

The model is a query-transformer head with a variational bottleneck (``spmlbench.train.mime_head``; its KL term
``beta * KL(N(mu, sigma) || N(0, 1))`` is added by the head). Per entry, with ``p = sigmoid(z / T)`` and the
training target ``t`` (the observed labels, then the pseudo-label matrix)::

    t = 1:  -log p          t = 0:  -log(1 - p)          t = -1:  0 (ignored)

averaged over B x C. Pseudo-labels after each epoch ``e >= warmup_epoch``: per class ``pi_c = (n_obs_c / N) / E``
and ``n_c = int(pi_c N)``; the ``n_c`` unlabelled training images with the highest ``p_c`` are ignored (-1),
observed positives stay 1, the rest 0. ``E = mean_i 1 / |Y_i|``: the released code computes it from the
ground-truth training labels (a leak); by default here ``E = 1 / expected_num_pos`` (the dataset's published
expected positives per image), ``prior = "ground_truth"`` uses the clean labels as released.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.losses.base import BatchedLoss, PredictFn, rows_of
from spmlbench.losses.hparams import HParams
from spmlbench.losses.registry import register_loss

PRIORS = ("expected", "ground_truth")


@dataclasses.dataclass(frozen=True)
class MIMEParams(HParams):
    """MIME: ``warmup_epoch`` per dataset (2; CUB 5), the VIB's ``beta`` and ``z_dim``, the class prior."""

    loss = "mime"
    warmup_epoch: int = 2
    T: float = 1.0
    beta: float = 1e-4
    z_dim: int = 256
    samples: int = 10
    prior: str = "expected"
    expected_num_pos: float | None = None

    def check(self) -> None:
        self.require("warmup_epoch", self.warmup_epoch >= 1, ">= 1 (1-based epoch)")
        self.positive("T")
        self.nonnegative("beta")
        self.require("z_dim", self.z_dim >= 1, ">= 1")
        self.require("samples", self.samples >= 1, ">= 1")
        self.require("prior", self.prior in PRIORS, f"one of {', '.join(PRIORS)}")
        if self.prior == "expected":
            self.require("expected_num_pos", self.expected_num_pos is not None and self.expected_num_pos > 0,
                         "> 0 (the dataset's expected positives per image)")


def mime_loss(hp: MIMEParams, logits: Tensor, observed: Tensor, target: Tensor) -> Tensor:
    """Per entry: ``-log p`` where ``target == 1``, ``-log(1 - p)`` where 0, 0 where -1 (``observed`` positives
    are always 1 in the target)."""
    z = logits / hp.T
    pos = (target == 1) | observed
    loss = F.softplus(torch.where(pos, -z, z))
    return torch.where(~pos & (target == -1), torch.zeros_like(loss), loss)


def class_prior(observed: Tensor, mean_inverse_cardinality: float) -> Tensor:
    """``pi_c = (n_obs_c / N) / E`` per class (``observed (N, C)``, ``E = mean_i 1 / |Y_i|``)."""
    return observed.float().mean(dim=0) / mean_inverse_cardinality


def ignore_counts(prior: Tensor, n: int) -> list[int]:
    """``n_c = int(pi_c N)`` per class."""
    return [int(v) for v in (prior.double() * n).tolist()]


def pseudo_targets(p: Tensor, observed: Tensor, counts: list[int]) -> Tensor:
    """int8 ``(N, C)``: 1 observed, -1 on the ``counts[c]`` unlabelled rows with the highest ``p[:, c]`` (ties:
    the lower row first), 0 elsewhere."""
    out = observed.to(torch.int8).clone()
    for c, k in enumerate(counts):
        free = torch.nonzero(~observed[:, c]).flatten()
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
        self.mean_inverse_cardinality: float | None = None  # ground-truth E (prior = ground_truth only)

    def init_state(self, observed_train: Tensor, seed: Any = 0) -> None:
        """The (N, C) observed matrix: every config's target until its first pseudo-labelling."""
        self.observed.copy_(observed_train.to(self.observed.device) > 0.5)
        self.target.copy_(self.observed.to(torch.int8).expand_as(self.target))

    def set_ground_truth(self, clean_train: Tensor) -> None:
        """``E = mean_i 1 / |Y_i|`` of the clean training labels (``prior = "ground_truth"``, as released)."""
        sizes = clean_train.float().sum(dim=1).clamp_min(1)
        self.mean_inverse_cardinality = float((1.0 / sizes).mean())

    @torch.no_grad()
    def end_epoch(self, predict_train: PredictFn | None = None) -> None:
        """Pseudo-label after epoch ``e >= warmup_epoch``; ``predict_train()`` -> (M, N, C) train logits."""
        active = [m for m, h in enumerate(self.hparams) if self.epoch >= h.warmup_epoch]  # type: ignore[attr-defined]
        if not active:
            return
        if predict_train is None:
            raise ConfigError("mime: end_epoch needs predict_train (train-set logits) for pseudo-labelling")
        p = torch.sigmoid(predict_train().float().to(self.observed.device))
        n = self.observed.shape[0]
        for m in active:
            hp = self.hparams[m]
            if hp.prior == "ground_truth":  # type: ignore[attr-defined]
                if self.mean_inverse_cardinality is None:
                    raise ConfigError("mime.prior=ground_truth: the trainer gives no clean labels; use prior=expected")
                e = self.mean_inverse_cardinality
            else:
                e = 1.0 / float(hp.expected_num_pos)  # type: ignore[attr-defined]
            counts = ignore_counts(class_prior(self.observed, e), n)
            self.target[m] = pseudo_targets(p[m], self.observed, counts)

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-config values (M,) of :func:`mime_loss` (autograd; the head adds its KL term)."""
        z, s = self.check_inputs(logits, observed, index)
        assert index is not None
        t = rows_of(self.target, index).to(z.device)
        return self.per_config_means(mime_loss, z, s, t)


register_loss("mime", params=MIMEParams, formula=mime_loss, title="MIME: variational query head + prior-based ignoring",
              paper="Liu et al., ICML", year=2023,
              citation="Liu et al. Revisiting Pseudo-Label for Single-Positive Multi-Label Learning (MIME). ICML 2023. "
                       "Code: github.com/palm-biaoliu/mime (62a0f66).",
              stateful=True, scheduled=True, batched=MIMELoss, head="mime", step_cost=2.0, order=155)
