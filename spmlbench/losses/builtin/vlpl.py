"""Vision-language pseudo-labels, VLPL (Xing et al., CVPRW 2024), as released (mvrl/VLPL@ed09b59, ``loss_EM_PL``).

Pseudo-labels from CLIP ViT-L/14-336: ``PL = 1`` where ``softmax(cos(e, t) / temp) > threshold`` over the
classes (:func:`~spmlbench.losses.builtin._pseudo.vlpl_rule`; e the image embedding, plain or flipped as
the training image, t the class text embeddings). Per entry, with ``p = sigmoid(z)``::

    s = 1:               nlog(p)
    s = 0, PL = 1:       beta_pos [0.9 nlog(p) + 0.1 nlog(1 - p)]
    s = 0, PL = 0:       -alpha [p nlog(p) + (1 - p) nlog(1 - p)]      (EM's entropy term)
    s = 0, PL = -1:      nlog(1 - p)                                    (only with partial > 0)

``nlog(x) = -log(x + eps)``, eps 1e-5, averaged over B x C. The paper also describes negative
pseudo-labels; the released code uses positives only (its negative branch is commented out), so
``partial`` (the fraction of lowest-scored classes made negatives) is 0 by default; with ``partial > 0``
they get the plain negative term above (our reading: the released code has none).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from spmlbench.losses.builtin._cole import nlog
from spmlbench.losses.builtin._em import entropy_maximisation
from spmlbench.losses.builtin._pseudo import PseudoLabelLoss, vlpl_rule
from spmlbench.hparams import HParams
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class VLPLParams(HParams):
    """VLPL: ``alpha`` per dataset (VOC 0.2, COCO 0.1, NUS 0.1, CUB 0.01), the rest as released."""

    loss = "vlpl"
    alpha: float = 0.2
    beta_pos: float = 0.7
    temp: float = 0.01
    threshold: float = 0.3
    partial: float = 0.0
    eps: float = 1e-5

    def check(self) -> None:
        self.nonnegative("alpha", "beta_pos")
        self.positive("temp", "eps")
        self.require("threshold", 0.0 <= self.threshold <= 1.0, "in [0, 1]")
        self.require("partial", 0.0 <= self.partial < 1.0, "in [0, 1) (0: positives only, as released)")


def vlpl_loss(hp: VLPLParams, logits: Tensor, observed: Tensor, pl: Tensor) -> Tensor:
    """Per entry: EM on the unlabelled entries, ``beta_pos`` x a 0.9-smoothed log loss on the pseudo
    positives ``pl == 1``, ``nlog(1 - p)`` on pseudo negatives ``pl == -1``."""
    p = torch.sigmoid(logits)
    em = entropy_maximisation(p, observed, hp.alpha, hp.eps)
    pos = hp.beta_pos * (0.9 * nlog(p, hp.eps) + 0.1 * nlog(1 - p, hp.eps))
    out = torch.where(~observed & (pl == 1), pos, em)
    return torch.where(~observed & (pl == -1), nlog(1 - p, hp.eps), out)


class VLPLLoss(PseudoLabelLoss):
    """[vlpl] M configs, their pseudo-label tables (M, N, C) rebuilt each epoch from the CLIP cache."""

    hparams_cls = VLPLParams
    pseudo_source = "vlpl"

    def views(self, hp: Any) -> int:
        return 1

    def rule(self, hp: Any, cos: Tensor, observed: Tensor) -> Tensor:
        return vlpl_rule(cos[:, 0], hp.temp, hp.threshold, hp.partial)

    def forward(self, logits: Tensor, observed: Tensor, index: Tensor | None = None) -> Tensor:
        """Per-config values (M,) of :func:`vlpl_loss` (autograd)."""
        z, s = self.check_inputs(logits, observed, index)
        assert index is not None
        pl = self.batch_pl(index, z)
        return self.per_config_means(vlpl_loss, z, s, pl)


register_loss("vlpl", params=VLPLParams, formula=vlpl_loss, title="Vision-language pseudo-labels (EM + CLIP positives)",
              paper="Xing et al., CVPRW", year=2024,
              citation="Xing et al. Vision-Language Pseudo-Labels for Single-Positive Multi-Label Learning. "
                       "CVPR Workshops 2024. Code: github.com/mvrl/VLPL (ed09b59).",
              stateful=True, scheduled=True, batched=VLPLLoss, pseudo="vlpl", step_cost=1.5, order=170,
              reference="mvrl/VLPL@ed09b59:losses.py")
