"""MIME-VIB, MIME's pooled-feature variant (linear mode; a re-design, not the released model): MIME's loss and
prior-based pseudo-labelling (``mime.py``) with a variational bottleneck head on the cached pooled features
(``spmlbench.train.mime_head.VIBHead``, trained by ``spmlbench.train.cached_heads.train_mime_vib``). The
released query transformer attends over the spatial map and runs as loss ``mime`` in modes e2e / linear-init.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from spmlbench.losses.builtin.mime import MIMELoss, MIMEParams, mime_loss
from spmlbench.losses.registry import register_loss


@dataclasses.dataclass(frozen=True)
class MIMEVIBParams(MIMEParams):
    """MIME's hyperparameters (the head's ``z_dim``, ``samples``, ``beta`` included)."""

    loss = "mime_vib"


def mime_vib_loss(hp: MIMEVIBParams, logits: Tensor, observed: Tensor, target: Tensor) -> Tensor:
    """MIME's loss per entry (the head adds its KL term)."""
    return mime_loss(hp, logits, observed, target)


register_loss("mime_vib", params=MIMEVIBParams, formula=mime_vib_loss,
              title="MIME-VIB: MIME's loss and ignoring with a bottleneck head on pooled features (linear re-design)",
              paper="Liu et al., ICML", year=2023,
              citation="After Liu et al. Revisiting Pseudo-Label for Single-Positive Multi-Label Learning (MIME). "
                       "ICML 2023; the pooled-feature head is spmlbench's re-design.",
              stateful=True, scheduled=True, batched=MIMELoss, trainer="mime_vib", step_cost=2.0, order=156,
              reference="palm-biaoliu/mime@62a0f66:utils/losses.py", version=2)
