"""Generalized robust loss, GR (Chen et al., IJCAI 2024), with every component as a switch.

Per entry, with ``p = sigmoid(z)`` and ``k``, ``v`` computed from the detached p::

    s = 1:  nlog(p)                                  (eps 1e-7)
    s = 0:  v(p) * [k(p) * L2(p) + (1 - k(p)) * L3(p)]
    k(p) = sigmoid(w p + b),  v(p) = exp(-(p - mu)^2 / (2 sigma^2))
    L2 = (1 - p^q2) / q2,     L3 = (1 - (1 - p)^q3) / q3       (q = 0: the limit -log)

averaged over B x C. Schedule (``n = linear_init``, 1-based epoch e of T)::

    w(e)  = w0  + (wT  - w0)  * max(e - n - 1, 0) / (T - n)     (b likewise; lag = True)
    mu(e) = mu0 + (muT - mu0) * max(e - n, 0)     / (T - n)     (sigma likewise)

Switches: ``use_k=False`` -> k = 0; ``use_v=False`` -> v = 1; ``schedule=False`` -> the initial w0, b0,
mu0, sigma0 at every epoch; ``lag=False`` -> w/b use ``max(e - n, 0)`` like mu/sigma. Before the first
``start_epoch`` the initial values apply.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.hparams import HParams
from spmlbench.losses.plain import Step
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class GRParams(HParams):
    """GR: ``beta = [w0, wT, b0, bT]``, ``alpha = [mu0, sig0, muT, sigT]`` (note the orders)."""

    loss = "gr"
    beta: tuple[float, ...] = dataclasses.field(default=(0.0, 2.0, -2.0, -2.0), metadata={"length": 4})
    alpha: tuple[float, ...] = dataclasses.field(default=(0.5, 2.0, 0.8, 0.5), metadata={"length": 4})
    q2: float = 0.01
    q3: float = 1.0
    linear_init: int = 0
    use_k: bool = True
    use_v: bool = True
    schedule: bool = True
    lag: bool = True
    eps: float = 1e-7

    def check(self) -> None:
        self.require("beta", len(self.beta) == 4 and all(math.isfinite(x) for x in self.beta),
                     "4 finite numbers [w0, wT, b0, bT]")
        self.require("alpha", len(self.alpha) == 4 and all(math.isfinite(x) for x in self.alpha),
                     "4 finite numbers [mu0, sig0, muT, sigT]")
        self.require("alpha", self.alpha[1] > 0 and self.alpha[3] > 0, "[mu0, sig0, muT, sigT] with sig0, sigT > 0")
        self.nonnegative("q2", "q3")  # q = 0 is the exact log-loss limit (ablation)
        self.positive("eps")
        self.require("linear_init", self.linear_init >= 0, ">= 0 (epochs)")


def gr_schedule(hp: GRParams, epoch: int, num_epochs: int) -> tuple[float, float, float, float]:
    """``(w, b, mu, sigma)`` in effect during 1-based ``epoch`` of ``num_epochs``."""
    w0, wt, b0, bt = hp.beta
    mu0, sig0, mut, sigt = hp.alpha
    if not hp.schedule:
        return w0, b0, mu0, sig0
    n = hp.linear_init
    span = num_epochs - n
    if span <= 0:
        raise ConfigError(f"gr.linear_init={n}: must be < the number of epochs ({num_epochs}); "
                          "lower linear_init or train longer")
    f_mu = max(epoch - n, 0) / span
    f_w = max(epoch - n - 1, 0) / span if hp.lag else f_mu
    return w0 + (wt - w0) * f_w, b0 + (bt - b0) * f_w, mu0 + (mut - mu0) * f_mu, sig0 + (sigt - sig0) * f_mu


def robust_log(x: Tensor, q: float) -> Tensor:
    """``(1 - x^q) / q``, and its limit ``-log x`` at q = 0."""
    return -torch.log(x) if q == 0 else (1 - x**q) / q


def gr_loss(hp: GRParams, logits: Tensor, observed: Tensor, step: Step) -> Tensor:
    """``nlog(p)`` on observed entries, ``v [k L2 + (1 - k) L3]`` on unobserved ones, per entry."""
    w, b, mu, sigma = gr_schedule(hp, step.epoch, step.num_epochs) if step.started else (
        hp.beta[0], hp.beta[2], hp.alpha[0], hp.alpha[1])
    p, one_minus_p = torch.sigmoid(logits), torch.sigmoid(-logits)  # 1 - p without cancellation near p = 1
    p_ = p.detach()
    k = torch.sigmoid(w * p_ + b) if hp.use_k else torch.zeros_like(p_)
    v = torch.exp(-(p_ - mu) ** 2 / (2 * sigma**2)) if hp.use_v else torch.ones_like(p_)
    unobserved = v * (k * robust_log(p, hp.q2) + (1 - k) * robust_log(one_minus_p, hp.q3))
    return torch.where(observed, -torch.log(p + hp.eps), unobserved)


register_loss("gr", params=GRParams, formula=gr_loss, title="Generalized robust loss", paper="Chen et al., IJCAI",
              year=2024, citation="Chen et al. Boosting Single Positive Multi-label Classification with "
                                  "Generalized Robust Loss. IJCAI 2024.",
              scheduled=True, vectorize="loop", fused="spmlbench.losses.fused.gr:GRLossBatched",
              single="spmlbench.losses.fused.gr:GRLoss", step_cost=1.4, order=160,
              reference="yan4xi1/GRLoss@5e13f7f:losses.py")
