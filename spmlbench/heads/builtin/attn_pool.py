"""Class-wise attention pooling: an example head (docs/adding-a-method.md), in the spirit of the class-specific
attention heads of multi-label recognition (e.g. Zhu & Wu, "Residual Attention", ICCV 2021). On the backbone's
feature map ``F (B, D, h, w)`` with ``n = h w`` positions ``F_i``::

    a_c = softmax_i(q_c . F_i / temperature)      (one learned query q_c (D,) per class)
    logit_c = w_c . sum_i a_c,i F_i + b_c

The queries start at zero, so training starts from the seed's linear head on average-pooled features (uniform
attention); ``weight``/``bias`` are named like ``nn.Linear``'s, so LinearInit's linear head loads into it. Any
loss trains it: ``--losses attn_pool_an,attn_pool_gr`` (``<head>_<loss>``), in every mode (linear mode on the
cached layer4 maps, ``spmlbench features DS --maps``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from spmlbench.heads.builtin.linear import seed_linear
from spmlbench.heads.registry import register_head
from spmlbench.hparams import HParams


@dataclasses.dataclass(frozen=True)
class AttnPoolOptions(HParams):
    """The softmax temperature of the attention over positions."""

    temperature: float = 1.0

    def check(self) -> None:
        self.positive("temperature")


class AttnPoolHead(nn.Module):
    """Per class, an attention-weighted average of the map's positions, then that class's linear score."""

    def __init__(self, dim: int, num_classes: int, temperature: float) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(num_classes, dim))
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.temperature = float(temperature)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)`` of a feature map ``(B, D, h, w)``."""
        f = fmap.flatten(2)  # (B, D, n)
        attention = torch.softmax(torch.einsum("cd,bdn->bcn", self.query, f) / self.temperature, dim=-1)
        pooled = torch.einsum("bcn,bdn->bcd", attention, f)  # (B, C, D)
        return (pooled * self.weight).sum(dim=-1) + self.bias


def build_attn_pool(dim: int, num_classes: int, seed: int, options: Any) -> AttnPoolHead:
    """The head with zero queries and the seed's linear-head init."""
    return seed_linear(AttnPoolHead(dim, num_classes, options.temperature), seed, dim, num_classes)


register_head("attn_pool", build=build_attn_pool, title="Class-wise attention pooling (example head)",
              consumes="map", modes=("linear", "e2e", "linear-init"), options=AttnPoolOptions, loads_linear=True,
              citation="spmlbench example head (docs/adding-a-method.md)")
