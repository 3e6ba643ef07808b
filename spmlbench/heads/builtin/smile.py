"""SMILE's classifier (Xu et al., NeurIPS 2022; palm-ml/smile@8feb9b8 ``spl_models.py`` ``MLPNet``): an MLP on
pooled features, ``Linear(D, C)``, ReLU, ``Linear(C, C)``, drawn under the seed before the label-enhancement
model (the released order; :func:`spmlbench.losses.builtin.smile.seeded_models`). Method ``smile``: this head
with SMILE's loss, whose label-enhancement model reads a bank of features: in linear mode SMILE's own trainer
on the cached features (``spmlbench.train.trainers.smile``), in e2e the backbone's pooled features.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spmlbench.heads.registry import Method, register_head

SMILE = dict(paper="Xu et al., NeurIPS", year=2022,
             citation="Xu et al. One Positive Label is Sufficient: Single-Positive Multi-Label Learning with Label "
                      "Enhancement (SMILE). NeurIPS 2022. Code: github.com/palm-ml/smile (8feb9b8).")


def mlp(d_in: int, d_out: int) -> nn.Module:
    """The released ``MLPNet``: Linear(d_in, d_out), ReLU, Linear(d_out, d_out) (SMILE's classifier ``f``)."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out))


def build_smile(dim: int, num_classes: int, seed: int, options: Any = None) -> nn.Module:
    """The classifier, drawn under ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return mlp(dim, num_classes)


register_head("smile", build=build_smile, title="SMILE's MLP classifier", consumes="pooled",
              modes=("linear", "e2e"), citation=SMILE["citation"],
              methods=(Method("smile", loss="smile", trainer="smile"),))
