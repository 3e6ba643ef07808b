"""Synthetic CLIP pseudo-label caches for the registry-driven loss tests (losses with ``pseudo_source``)."""

from __future__ import annotations

from typing import Any

import torch


def attach_test_pseudo(loss: Any, num_train: int, num_classes: int, seed: int = 9) -> None:
    """Give ``loss`` (batched or single) a random ``(N, 2, V, C)`` cosine table when it reads one."""
    batched = getattr(loss, "batched", loss)
    if not getattr(batched, "pseudo_source", ""):
        return
    views = max(batched.views(h) for h in batched.hparams)
    g = torch.Generator().manual_seed(seed)
    batched.attach_pseudo(torch.rand(num_train, 2, views, num_classes, generator=g) * 0.3)
