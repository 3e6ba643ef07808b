"""Regularised online label estimation, ROLE (Cole et al., CVPR 2021).

A label-logit matrix ``G`` (one row per training image) is learned with the classifier. With
``p = sigmoid(z)``, ``q = sigmoid(g)``, ``g = G[rows]`` and the cross targets ``p', q'`` (detached), per entry

    0.5 [s nlog(p) + s nlog(q)] + 0.5 [q' nlog(p) + (1 - q') nlog(1 - p) + p' nlog(q) + (1 - p') nlog(1 - q)]

averaged over B x C, plus ``0.5 [(mean_b sum_c p - k)^2 + (mean_b sum_c q - k)^2] / C^2``.

``G`` starts at ``logit(0.995)`` on observed positives and ``logit(0.6) (2 U - 1)`` elsewhere
(``U ~ uniform[0, 1)`` drawn with ``torch.rand`` from the job's seed) and is trained at ``lr_mult x lr``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from spmlbench.errors import ConfigError
from spmlbench.losses.base import BatchedLoss, rows_of
from spmlbench.losses.builtin._cole import COLE, COLE_EPS, nlog
from spmlbench.losses.builtin.epr import expected_positive_penalty
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class ROLEParams(HParams):
    """ROLE: EPR's ``expected_num_pos`` plus the label-matrix learning-rate multiplier."""

    loss = "role"
    expected_num_pos: float | None = None
    eps: float = COLE_EPS
    lr_mult: float = 10.0

    def check(self) -> None:
        self.require("expected_num_pos", self.expected_num_pos is not None,
                     "given (no per-dataset default for this dataset)")
        self.positive("expected_num_pos", "eps", "lr_mult")


def role_loss(hp: ROLEParams, logits: Tensor, observed: Tensor, label_logits: Tensor) -> Tensor:
    """ROLE's value for one config: logits and ``label_logits = G[rows]`` (B, C); a scalar."""
    p, q = torch.sigmoid(logits), torch.sigmoid(label_logits)
    p_, q_ = p.detach(), q.detach()
    eps = hp.eps
    observed_term = observed * (nlog(p, eps) + nlog(q, eps))
    cross = q_ * nlog(p, eps) + (1 - q_) * nlog(1 - p, eps) + p_ * nlog(q, eps) + (1 - p_) * nlog(1 - q, eps)
    assert hp.expected_num_pos is not None
    k = hp.expected_num_pos
    regulariser = 0.5 * (expected_positive_penalty(p, k) + expected_positive_penalty(q, k))
    return (0.5 * observed_term + 0.5 * cross).mean() + regulariser


class ROLELoss(BatchedLoss):
    """[role] M configs with their label-logit matrix ``G`` (M, N, C), an ``nn.Parameter``.

    :meth:`init_state` must run before training (``seed`` an int, a CPU generator, or M ints: config
    m gets the draw of ``seed[m]``, as a one-config loss initialised with that seed). Give ``G`` to the
    optimizer with :meth:`param_groups` (all configs of one batched ROLE share ``lr_mult``).
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
            gens, states = [gen] * self.num_configs, [gen.get_state()] * self.num_configs  # one draw for all
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

    def param_groups(self, lr: float, head_lr: float | None = None) -> list[dict[str, Any]]:
        mults = set(self.values("lr_mult"))
        if len(mults) != 1:
            raise ConfigError(f"role.lr_mult: the configs of one batched ROLE loss use {sorted(mults)}; "
                              "split configs with different lr_mult into separate runs")
        return [{"params": [self.G], "lr": lr * mults.pop()}]

    def check_ready(self) -> None:
        """Refuse to train before :meth:`init_state`."""
        if not self.ready:
            raise RuntimeError("role: label matrix G not initialised; call loss.init_state(observed_train, seed) "
                               "before training")

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-config values (M,): :func:`role_loss` of each config on its rows of ``G`` (autograd)."""
        z, s = self.check_inputs(logits, observed, index)
        self.check_ready()
        assert index is not None
        g = rows_of(self.G, index).to(z.dtype)
        return torch.stack([role_loss(hp, z[m], s[m if s.shape[0] > 1 else 0], g[m])  # type: ignore[arg-type]
                            for m, hp in enumerate(self.hparams)])


register_loss("role", params=ROLEParams, formula=role_loss, title="Regularised online label estimation", **COLE,
              stateful=True, batched=ROLELoss, fused="spmlbench.losses.fused.cole:ROLEFusedLoss",
              step_cost=6.0, order=60,
              reference="elijahcole/single-positive-multi-label@89152d5:losses.py")
