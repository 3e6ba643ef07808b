"""What Hill and SPLC (Zhang et al., 2021) share: the citation and the focal-margin positive term."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

ZHANG = dict(paper="Zhang et al., arXiv", year=2021,
             citation="Zhang, Cheng, Huang, Wen, Feng, Li, Guo. Simple and Robust Loss Design for Multi-Label "
                      "Learning with Missing Labels. arXiv:2112.07368, 2021.")


def focal_log(y: Tensor, gamma: Tensor | float) -> Tensor:
    """``-(1 - q)^gamma log q``, ``q = sigmoid(y)``, on logits (``logsigmoid``, as the official code)."""
    return -(1 - y.sigmoid()) ** gamma * F.logsigmoid(y)
