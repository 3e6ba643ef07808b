"""What the Acknowledging-the-Unknown losses (Zhou et al., ECCV 2022) share: the citation and the EM entries
(their code builds on Cole et al.'s, whose ``nlog`` they use)."""

from __future__ import annotations

import torch
from torch import Tensor

from spmlbench.losses.builtin._cole import nlog

EM_PAPER = dict(paper="Zhou et al., ECCV", year=2022,
                citation="Zhou, Chen, Wang, Chen, Heng. Acknowledging the Unknown for Multi-label Learning with "
                         "Single Positive Labels. ECCV 2022.")
EM_EPS = 1e-5


def entropy_maximisation(p: Tensor, observed: Tensor, alpha: Tensor | float, eps: Tensor | float) -> Tensor:
    """EM per entry: ``s = 1: nlog(p)``; ``s = 0: -alpha H(p)``, ``H(p) = p nlog(p) + (1 - p) nlog(1 - p)``."""
    entropy = p * nlog(p, eps) + (1 - p) * nlog(1 - p, eps)
    return torch.where(observed, nlog(p, eps), -alpha * entropy)
