"""What the Cole et al. 2021 losses share: the citation and the reference ``nlog``."""

from __future__ import annotations

from torch import Tensor

COLE = dict(paper="Cole et al., CVPR", year=2021,
            citation="Cole, Mac Aodha, Lorieul, Perona, Morris, Jojic. Multi-Label Learning from Single "
                     "Positive Labels. CVPR 2021.")
COLE_EPS = 1e-5


def nlog(x: Tensor, eps: Tensor | float) -> Tensor:
    """``-log(x + eps)``: the reference code's negative log of a probability."""
    return -(x + eps).log()
