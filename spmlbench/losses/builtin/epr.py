"""Expected positive regulariser, EPR (Cole et al., CVPR 2021).

With ``p = sigmoid(z)``: ``mean_bc(s nlog(p)) + (mean_b sum_c p - k)^2 / C^2``, ``k`` the expected number of
positives per image (per dataset), ``nlog(x) = -log(x + eps)``. Unobserved entries enter only through the
regulariser.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from spmlbench.losses.builtin._cole import COLE, COLE_EPS, nlog
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


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


def expected_positive_penalty(p: Tensor, k: float) -> Tensor:
    """``(mean_b sum_c p - k)^2 / C^2`` of probabilities ``p`` (B, C)."""
    return (p.sum(dim=-1).mean(dim=-1) - k) ** 2 / p.shape[-1] ** 2


def epr_loss(hp: EPRParams, logits: Tensor, observed: Tensor) -> Tensor:
    """``mean_bc(s nlog(p)) + (mean_b sum_c p - k)^2 / C^2`` (a scalar: the regulariser is outside the mean)."""
    p = torch.sigmoid(logits)
    assert hp.expected_num_pos is not None
    return (observed * nlog(p, hp.eps)).mean() + expected_positive_penalty(p, hp.expected_num_pos)


register_loss("epr", params=EPRParams, formula=epr_loss, title="Expected positive regulariser", **COLE,
              fused="spmlbench.losses.fused.cole:EPRLoss", step_cost=1.4, order=50,
              reference="elijahcole/single-positive-multi-label@89152d5:losses.py")
