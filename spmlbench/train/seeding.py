"""Matched seeds: head initialisation and minibatch order drawn from streams of the seed only.

For seed ``s`` one ``torch.Generator().manual_seed(s)`` stream draws, in this order, the head
weight ``(C, D)`` and bias ``(C,)`` (``nn.Linear``'s default ranges, ``U(-1/sqrt(D), 1/sqrt(D))``:
:func:`spmlbench.heads.builtin.linear.head_init`), then one ``torch.randperm(N)`` per epoch. Nothing depends on the loss, so every loss trained with
seed ``s`` starts from the same head and sees the same batches.
"""

from __future__ import annotations

import torch

from spmlbench.heads.builtin.linear import head_init  # noqa: F401 - the head draws of the seed's stream (defined with the linear head)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def epoch_orders(seed: int, num_train: int, epochs: int, in_dim: int, num_classes: int) -> list[torch.Tensor]:
    """Return the train-row permutation of every epoch (1..epochs) for ``seed``.

    The permutations continue the stream after the head draws of :func:`head_init` (same
    ``in_dim``/``num_classes``), so init and order come from one generator per seed.
    """
    g = _generator(seed)
    torch.rand(num_classes, in_dim, generator=g)  # skip the head draws
    torch.rand(num_classes, generator=g)
    return [torch.randperm(num_train, generator=g) for _ in range(epochs)]


def batches(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Split one epoch's permutation into consecutive minibatches (the last may be smaller)."""
    return list(torch.split(order, batch_size))


def num_steps(num_train: int, batch_size: int) -> int:
    """Minibatches per epoch (the last partial batch is kept)."""
    return -(-num_train // batch_size)


__all__ = ["batches", "epoch_orders", "head_init", "num_steps"]
