"""Cole et al. 2021 (CVPR) losses: BCE (clean-label upper bound), AN, AN-LS, WAN, EPR, ROLE.

Reference conventions: ``nlog(x) = -log(x + eps)`` with eps = 1e-5 on probabilities; the per-entry
matrix is averaged over B x C and regularisers are added after. ``1 - p`` is computed as
``sigmoid(-z)`` (same value, no cancellation near p = 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from spmlbench.errors import ConfigError
from spmlbench.losses.base import BatchedLoss, expected_positive_reg, nlog, rows_of
from spmlbench.losses.hparams import HParams

COLE_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class BCEParams(HParams):
    """Full-label BCE (oracle): only the log epsilon."""

    loss = "bce"
    eps: float = COLE_EPS

    def check(self) -> None:
        self.positive("eps")


@dataclasses.dataclass(frozen=True)
class ANParams(BCEParams):
    """Assume negative."""

    loss = "an"


@dataclasses.dataclass(frozen=True)
class WANParams(BCEParams):
    """Weighted assume negative (negatives weighted 1 / (C - 1))."""

    loss = "wan"


@dataclasses.dataclass(frozen=True)
class ANLSParams(HParams):
    """Assume negative with label smoothing ``ls_coef``."""

    loss = "an_ls"
    ls_coef: float = 0.1
    eps: float = COLE_EPS

    def check(self) -> None:
        self.require("ls_coef", 0.0 <= self.ls_coef <= 1.0, "in [0, 1]")
        self.positive("eps")


@dataclasses.dataclass(frozen=True)
class EPRParams(HParams):
    """Expected positive regulariser; ``expected_num_pos`` defaults per dataset."""

    loss = "epr"
    expected_num_pos: float | None = None
    eps: float = COLE_EPS

    def check(self) -> None:
        self.require("expected_num_pos", self.expected_num_pos is not None,
                     "given (no per-dataset default for this dataset)")
        self.positive("expected_num_pos", "eps")


@dataclasses.dataclass(frozen=True)
class ROLEParams(EPRParams):
    """ROLE: EPR's ``expected_num_pos`` plus the label-matrix learning-rate multiplier."""

    loss = "role"
    lr_mult: float = 10.0

    def check(self) -> None:
        super().check()
        self.positive("lr_mult")


class BCELoss(BatchedLoss):
    """[bce] BCE on the clean labels (the trainer passes clean labels as ``observed``)."""

    hparams_cls = BCEParams

    def loss_matrix(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        eps = self.col("eps", z)
        return torch.where(s, nlog(torch.sigmoid(z), eps), nlog(torch.sigmoid(-z), eps))


class ANLoss(BCELoss):
    """[an] s = 1: nlog(p); s = 0: nlog(1 - p)."""

    hparams_cls = ANParams


class ANLSLoss(BatchedLoss):
    """[an_ls] AN with label smoothing ``ls`` on both sides."""

    hparams_cls = ANLSParams

    def loss_matrix(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        eps, ls = self.col("eps", z), self.col("ls_coef", z)
        lp, ln = nlog(torch.sigmoid(z), eps), nlog(torch.sigmoid(-z), eps)
        return torch.where(s, (1 - ls) * lp + ls * ln, (1 - ls) * ln + ls * lp)


class WANLoss(BatchedLoss):
    """[wan] s = 1: nlog(p); s = 0: nlog(1 - p) / (C - 1)."""

    hparams_cls = WANParams

    def __init__(self, hparams: Any, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)
        if num_classes < 2:
            raise ConfigError(f"wan: num_classes={num_classes}: must be >= 2 (negatives are weighted 1/(C-1))")

    def loss_matrix(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        eps = self.col("eps", z)
        return torch.where(s, nlog(torch.sigmoid(z), eps), nlog(torch.sigmoid(-z), eps) / (self.num_classes - 1))


class EPRLoss(BatchedLoss):
    """[epr] s = 1: nlog(p); s = 0: 0; plus ``(mean_b sum_c p - k)^2 / C^2``."""

    hparams_cls = EPRParams

    def loss_matrix(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        return torch.where(s, nlog(torch.sigmoid(z), self.col("eps", z)), 0.0)

    def regulariser(self, z: Tensor, s: Tensor, index: Tensor | None) -> Tensor:
        k = self.col("expected_num_pos", z).view(-1)
        return expected_positive_reg(torch.sigmoid(z), k)


class ROLELoss(BatchedLoss):
    """[role] Regularised online label estimation with a learnable label-logit matrix ``G``.

    ``G`` is an ``nn.Parameter`` of shape (M, N, C). It must be initialised with
    :meth:`init_state` (observed positives ``logit(0.995)``, other entries
    ``logit(0.6) * (2 U - 1)``, ``U ~ uniform[0, 1)`` drawn with ``torch.rand`` from the given
    seed/generator; every config gets the same draw; a sequence of M ints gives config m the draw
    of ``seed[m]``, as a one-config loss initialised with that seed). Give it to the optimizer with
    :meth:`param_groups` (``lr_mult * lr``); all configs of one batched ROLE must share ``lr_mult``.
    """

    hparams_cls = ROLEParams
    needs_rows = True

    POS_INIT = 0.995
    UNOBS_INIT = 0.6

    def __init__(self, hparams: Any, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)
        assert num_train is not None
        self.G = nn.Parameter(torch.zeros(self.num_configs, num_train, num_classes))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self.ready = False  # host copy of ``initialised``: set by init_state and state loads, read per step

    @torch.no_grad()
    def init_state(self, observed_train: Tensor, seed: int | torch.Generator | Sequence[int] = 0) -> None:
        """Initialise G from the (N, C) training observed matrix; ``seed`` int, CPU generator or M ints."""
        n, c = self.G.shape[1:]
        if tuple(observed_train.shape) != (n, c):
            raise ValueError(f"observed_train must be ({n}, {c}), got {tuple(observed_train.shape)}")
        if isinstance(seed, (int, torch.Generator)):
            gen = torch.Generator().manual_seed(seed) if isinstance(seed, int) else seed
            state = gen.get_state()
            gens = [gen] * self.num_configs
            states = [state] * self.num_configs  # the same draw for every config (matched across configs)
        else:
            seeds = [int(x) for x in seed]
            if len(seeds) != self.num_configs:
                raise ValueError(f"role: {len(seeds)} seeds given for {self.num_configs} configs")
            gens = [torch.Generator().manual_seed(x) for x in seeds]
            states = [g.get_state() for g in gens]
        pos = (observed_train > 0.5).cpu()
        for m in range(self.num_configs):
            gens[m].set_state(states[m])
            g = math.log(self.UNOBS_INIT / (1 - self.UNOBS_INIT)) * (2 * torch.rand(n, c, generator=gens[m]) - 1)
            g[pos] = math.log(self.POS_INIT / (1 - self.POS_INIT))
            self.G[m].copy_(g.to(self.G.device))
        self.initialised.fill_(True)
        self.ready = True

    def _load_from_state_dict(self, state_dict: Any, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.ready = bool(self.initialised)  # one host read at load time, none per step

    def param_groups(self, lr: float) -> list[dict[str, Any]]:
        mults = set(self.values("lr_mult"))
        if len(mults) != 1:
            raise ConfigError(f"role.lr_mult: the configs of one batched ROLE loss use {sorted(mults)}; "
                              "split configs with different lr_mult into separate runs")
        return [{"params": [self.G], "lr": lr * mults.pop()}]

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        z, s = self.check_inputs(logits, observed, index)
        if not self.ready:
            raise RuntimeError("role: label matrix G not initialised; call loss.init_state(observed_train, seed) "
                               "before training")
        assert index is not None
        eps = self.col("eps", z)
        k = self.col("expected_num_pos", z).view(-1)
        g = rows_of(self.G, index).to(z.dtype)  # dense (M, N, C) grad: G is a dense Parameter
        p, pn = torch.sigmoid(z), torch.sigmoid(-z)
        q, qn = torch.sigmoid(g), torch.sigmoid(-g)
        lp_p, ln_p, lp_q, ln_q = nlog(p, eps), nlog(pn, eps), nlog(q, eps), nlog(qn, eps)
        l_f, l_g = torch.where(s, lp_p, 0.0), torch.where(s, lp_q, 0.0)
        qd, pd = q.detach(), p.detach()
        x_f = qd * lp_p + (1 - qd) * ln_p
        x_g = pd * lp_q + (1 - pd) * ln_q
        mat = 0.5 * (l_f + l_g) + 0.5 * (x_f + x_g)
        reg = 0.5 * (expected_positive_reg(p, k) + expected_positive_reg(q, k))
        return mat.mean(dim=(-2, -1)) + reg

