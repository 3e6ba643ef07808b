"""The linear head: ``nn.Linear(D, C)`` on pooled features, every plain loss's head (the linear probe in mode
linear, the classifier of the fine-tuned backbone in e2e, the linear phase of linear-init).

Matched seeds: for seed ``s`` one ``torch.Generator().manual_seed(s)`` stream draws the head weight ``(C, D)``
then the bias ``(C,)`` in ``nn.Linear``'s default ranges ``U(-1/sqrt(D), 1/sqrt(D))`` (:func:`head_init`);
:func:`spmlbench.train.seeding.epoch_orders` continues that stream with the epochs' row orders. Nothing
depends on the loss, so every loss trained with seed ``s`` starts from the same head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from spmlbench.heads.registry import DEFAULT_HEAD, register_head


def head_init(seed: int, in_dim: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(weight (C, D), bias (C,))`` float32 on the CPU for ``seed`` (nn.Linear layout)."""
    g = torch.Generator().manual_seed(int(seed))
    bound = 1.0 / math.sqrt(in_dim) if in_dim > 0 else 0.0
    weight = (torch.rand(num_classes, in_dim, generator=g, dtype=torch.float32) * 2 - 1) * bound
    bias = (torch.rand(num_classes, generator=g, dtype=torch.float32) * 2 - 1) * bound
    return weight, bias


def seed_linear(module: nn.Module, seed: int, in_dim: int, num_classes: int) -> nn.Module:
    """Copy the seed's linear-head init (:func:`head_init`) into ``module.weight`` / ``module.bias``."""
    w, b = head_init(seed, in_dim, num_classes)
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(b)
    return module


def build_linear(dim: int, num_classes: int, seed: int, options: Any = None) -> nn.Linear:
    """``nn.Linear(dim, num_classes)`` with the seed's init."""
    return seed_linear(nn.Linear(dim, num_classes), seed, dim, num_classes)


register_head(DEFAULT_HEAD, build=build_linear, title="Linear head", consumes="pooled",
              modes=("linear", "e2e", "linear-init"), loads_linear=True)
