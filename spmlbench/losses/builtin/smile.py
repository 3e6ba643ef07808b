"""SMILE (Xu et al., NeurIPS 2022), as released (palm-ml/smile@8feb9b8, train_smile2.py, spl_losses.py).

A label-enhancement method for fixed features: a GCN over the 3-NN graph of the training features infers a
label distribution ``D1 = sigmoid(GCN(G, X) / T)``; the classifier (an MLP, d -> C -> C) trains on soft
targets ``D = mu D1 + (1 - mu) D2`` (``D2`` = observed labels with 0 -> ``p``, both detached)::

    classifier:  D nlog(y) + (1 - D) nlog(1 - y)        (unobserved entries / (C - 1) if bias, else x rate)
    inference:   AN(D1) + gamma [MSE(x_rec, x) + AN(y_rec) + MSE(y_rec y_rec^T, A_batch)] + delta KL(D1)

with ``y = sigmoid(f(x) / T)``, ``nlog(x) = -log(x + 1e-5)``, means over entries, ``y_rec ~ Beta(D1 + 1e-5,
1 - D1 + 1e-5)`` and two Adam optimisers stepped one after the other each batch (the trainer:
``spmlbench.train.trainers.smile``). ``KL`` as released is ``mean[lgamma(a) + lgamma(b) + (a - 1) psi(a) + (b - 1)
psi(b)]`` at ``a = D1 + 1e-6``, ``b = 1 - D1 + 1e-6`` (not a Beta KL); ``kl = "beta"`` uses the Beta KL to
Beta(1, 1) instead: ``lgamma(a + b) - lgamma(a) - lgamma(b) + (a - 1) psi(a) + (b - 1) psi(b) - (a + b - 2)
psi(a + b)``. The official code is tabular only; here the GCN reads a bank of image features: the cached
features in linear mode (:mod:`spmlbench.train.trainers.smile`), the backbone's pooled features in e2e (each row's refreshed
as its batch trains, the graph rebuilt every epoch; the classifier is the e2e model's head).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.losses.base import BatchedLoss, rows_of
from spmlbench.losses.builtin._smile_model import LabelEnhancer, seeded_models
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss

EPS = 1e-5
KL_CHOICES = ("released", "beta")


@dataclasses.dataclass(frozen=True)
class SMILEParams(HParams):
    """SMILE: the released defaults (p 0.5, mu 0.5, gamma 1e-3, delta 1, bias on, T 1, a 3-NN graph)."""

    loss = "smile"
    p: float = 0.5
    mu: float = 0.5
    gamma: float = 1e-3
    delta: float = 1.0
    bias: bool = True
    rate: float = 1.0
    T: float = 1.0
    k: int = 3
    kl: str = "released"

    def check(self) -> None:
        self.require("p", 0.0 <= self.p <= 1.0, "in [0, 1]")
        self.require("mu", 0.0 <= self.mu <= 1.0, "in [0, 1]")
        self.nonnegative("gamma", "delta", "rate")
        self.positive("T")
        self.require("k", self.k >= 1, ">= 1 (neighbours)")
        self.require("kl", self.kl in KL_CHOICES, f"one of {', '.join(KL_CHOICES)}")


def nlog(x: Tensor) -> Tensor:
    """``-log(x + 1e-5)`` (the released ``neg_log``)."""
    return -torch.log(x + EPS)


def soft_targets(hp: SMILEParams, d1: Tensor, observed: Tensor) -> Tensor:
    """``D = mu D1 + (1 - mu) D2``, ``D2`` the observed labels with 0 -> ``p`` (detached)."""
    d2 = torch.where(observed, torch.ones_like(d1), torch.full_like(d1, hp.p))
    return (hp.mu * d1 + (1 - hp.mu) * d2).detach()


def smile_loss(hp: SMILEParams, logits: Tensor, observed: Tensor, d1: Tensor) -> Tensor:
    """The classifier's loss per entry: ``D nlog(y) + (1 - D) nlog(1 - y)``, ``y = sigmoid(z / T)``; the
    unobserved entries divided by ``C - 1`` (``bias``) or times ``rate``."""
    y = torch.sigmoid(logits / hp.T)
    d = soft_targets(hp, d1, observed)
    loss = d * nlog(y) + (1 - d) * nlog(1 - y)
    scale = 1.0 / (logits.shape[-1] - 1) if hp.bias else hp.rate
    return torch.where(observed, loss, loss * scale)


def assume_negative(scores: Tensor, observed: Tensor) -> Tensor:
    """The released ``loss_an`` on scores in [0, 1]: ``nlog`` where observed, ``nlog(1 - s)`` elsewhere, mean."""
    return torch.where(observed, nlog(scores), nlog(1 - scores)).mean()


def beta_kl(d1: Tensor, kind: str = "released") -> Tensor:
    """The KL term at ``a = D1 + 1e-6``, ``b = 1 - D1 + 1e-6`` (see the module docstring), mean."""
    a, b = d1 + 1e-6, 1 - d1 + 1e-6
    if kind == "released":
        kl = torch.lgamma(a) + torch.lgamma(b) + (a - 1) * torch.digamma(a) + (b - 1) * torch.digamma(b)
    else:
        kl = (torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b) + (a - 1) * torch.digamma(a)
              + (b - 1) * torch.digamma(b) - (a + b - 2) * torch.digamma(a + b))
    return kl.mean()


def inference_loss(hp: SMILEParams, x: Tensor, observed: Tensor, d1: Tensor, adj: Tensor, x_rec: Tensor,
                   y_rec: Tensor) -> Tensor:
    """``AN(D1) + gamma [MSE(x_rec, x) + AN(y_rec) + MSE(y_rec y_rec^T, A_batch)] + delta KL(D1)``."""
    rec = (torch.nn.functional.mse_loss(x_rec, x.detach()) + assume_negative(y_rec, observed)
           + torch.nn.functional.mse_loss(y_rec @ y_rec.t(), adj.detach()))
    return assume_negative(d1, observed) + hp.gamma * rec + hp.delta * beta_kl(d1, hp.kl)


class SMILELoss(BatchedLoss):
    """[smile] The classifier's loss for M configs against each config's inferred distribution ``d1`` (M, N, C).

    With the label-enhancement model attached (:meth:`attach_model`, one config) and the batch's features
    passed (``features (B, d)``), one call is SMILE's whole step: the bank takes the batch's features, the GCN
    infers ``D1`` for the batch, and the value is the classifier's loss (``D1`` detached) plus the inference
    loss. The two released Adam optimisers cover disjoint parameters at one lr and neither loss reaches the
    other's parameters, so one Adam over both (:meth:`param_groups`) takes the released steps.
    """

    hparams_cls = SMILEParams
    needs_rows = True
    needs_features = True  # e2e: the trainer attaches the model and passes each batch's pooled features

    def __init__(self, hparams: object, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)  # type: ignore[arg-type]
        assert num_train is not None
        start = torch.tensor([h.p for h in self.hparams]).view(-1, 1, 1)  # type: ignore[attr-defined]
        self.register_buffer("d1", start.expand(self.num_configs, num_train, num_classes).clone())
        self.enhancer: LabelEnhancer | None = None

    def attach_model(self, dim: int, seed: int) -> None:
        """Build the label-enhancement model for ``dim``-wide features, drawn under ``seed`` after the classifier
        (:func:`seeded_models`; call before ``.to(device)``)."""
        if self.num_configs != 1:
            raise ConfigError(f"smile: its label-enhancement model trains one config at a time, got {self.num_configs}")
        self.enhancer = seeded_models(dim, self.num_classes, seed, int(self.d1.shape[1]))[1]

    def build_graph(self, features: Callable[[], Tensor]) -> None:
        """Before each epoch: the bank (from ``features()`` the first time) and its k-NN graph."""
        assert self.enhancer is not None, "attach_model first"
        self.enhancer.build_graph(features, self.hparams[0].k)  # type: ignore[attr-defined]

    def param_groups(self, lr: float, head_lr: float | None = None) -> list[dict[str, Any]]:
        """The label-enhancement model at the classifier's lr (``head_lr``; the released optimisers share one)."""
        if self.enhancer is None:
            return []
        return [{"params": list(self.enhancer.parameters()), "lr": lr if head_lr is None else head_lr}]

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None,
                features: Tensor | None = None) -> Tensor:
        """Per-config values (M,) of :func:`smile_loss` (autograd); with ``features``, plus the inference loss."""
        z, s = self.check_inputs(logits, observed, index)
        assert index is not None
        if features is None:
            return self.per_config_means(smile_loss, z, s, rows_of(self.d1, index).to(z))
        enh, hp = self.enhancer, self.hparams[0]
        assert enh is not None and index.dim() == 1, "attach_model first; one config"
        rows = index.to(enh.bank.device)
        x = features.detach().float()
        enh.bank[rows] = x
        d1 = torch.sigmoid(enh.gcn(rows) / hp.T)  # type: ignore[attr-defined]
        self.d1[0, rows] = d1.detach()
        x_rec, y_rec = enh.reconstruct(x, d1)
        inference = inference_loss(hp, x, s[0], d1, enh.batch_adjacency(rows), x_rec, y_rec)  # type: ignore[arg-type]
        return self.per_config_means(smile_loss, z, s, d1.detach().unsqueeze(0)) + inference


register_loss("smile", params=SMILEParams, formula=smile_loss, title="SMILE: label enhancement by a GCN over the kNN graph",
              paper="Xu et al., NeurIPS", year=2022,
              citation="Xu et al. One Positive Label is Sufficient: Single-Positive Multi-Label Learning with Label "
                       "Enhancement (SMILE). NeurIPS 2022. Code: github.com/palm-ml/smile (8feb9b8).",
              stateful=True, batched=SMILELoss, step_cost=3.0, order=95,
              reference="palm-ml/smile@8feb9b8:train_smile2.py")
