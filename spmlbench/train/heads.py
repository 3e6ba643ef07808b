"""Stacked linear heads of many configs, stored grouped by seed.

Configs that share a seed share every minibatch (matched seeds). Storing their heads next to each
other lets one seed's batch rows ``(B, D)`` serve all of them as a stride-0 view: the logits and
the weight gradient of each seed group are one ``baddbmm`` / ``bmm`` over ``x.expand(n, B, D)``,
and the batch is never copied once per config (at linear-probe sizes that copy cost as much as
the matrix products). Callers index configs in their own order ("config order"); the heads keep
a permutation to and from their storage order. Per config, every product is the same ``bmm`` batch
item as with a replicated batch, so the numbers do not depend on the storage order (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


class StackedHeads:
    """Heads ``W (M, D, C)``, ``b (M, C)`` of M configs; config ``i`` trains on seed slot ``seed_of[i]``.

    ``weight`` / ``bias`` (the optimizer's parameters) are in storage order: grouped by seed slot,
    in config order within a slot. :meth:`to_storage` / :meth:`to_configs` move any ``(M, ...)``
    tensor between the two orders.
    """

    def __init__(self, weight: Tensor, bias: Tensor, seed_of: Sequence[int]) -> None:
        m = len(seed_of)
        if weight.shape[0] != m or bias.shape[0] != m:
            raise ValueError(f"{m} seed slots for {weight.shape[0]} heads")
        order = sorted(range(m), key=lambda i: (seed_of[i], i))  # storage position -> config
        where = [0] * m  # config -> storage position
        for k, i in enumerate(order):
            where[i] = k
        dev = weight.device
        self.permuted = order != list(range(m))
        self.config_at = torch.tensor(order, device=dev)
        self.storage_of = torch.tensor(where, device=dev)
        self.seed_of = [seed_of[i] for i in order]  # per storage position
        self.weight = weight.index_select(0, self.config_at).contiguous()
        self.bias = bias.index_select(0, self.config_at).contiguous()
        self.groups: list[tuple[int, int, int]] = []  # (seed slot, lo, hi) in storage order
        for k, slot in enumerate(self.seed_of):
            if self.groups and self.groups[-1][0] == slot:
                self.groups[-1] = (slot, self.groups[-1][1], k + 1)
            else:
                self.groups.append((slot, k, k + 1))
        self.grad_w = torch.empty_like(self.weight)

    @property
    def num_configs(self) -> int:
        """Number of configs M."""
        return int(self.weight.shape[0])

    def to_storage(self, t: Tensor) -> Tensor:
        """A config-ordered ``(M, ...)`` tensor in storage order."""
        return t.index_select(0, self.config_at) if self.permuted else t

    def to_configs(self, t: Tensor) -> Tensor:
        """A storage-ordered ``(M, ...)`` tensor in config order."""
        return t.index_select(0, self.storage_of) if self.permuted else t

    def storage_values(self, values: Sequence[float]) -> list[float]:
        """Per-config values (config order) listed in storage order (e.g. learning rates)."""
        return [values[i] for i in self.config_at.tolist()]

    def logits(self, xs: Tensor) -> Tensor:
        """Logits ``(M, B, C)`` in config order for the seed slots' batches ``xs (S, B, D)``."""
        _, b, d = xs.shape
        out = torch.empty(self.num_configs, b, self.weight.shape[2], dtype=self.weight.dtype, device=xs.device)
        for slot, lo, hi in self.groups:
            torch.baddbmm(self.bias[lo:hi].unsqueeze(1), xs[slot].expand(hi - lo, b, d), self.weight[lo:hi],
                          out=out[lo:hi])
        return self.to_configs(out)

    def grads(self, xs: Tensor, dlogits: Tensor) -> tuple[Tensor, Tensor]:
        """``(dW, db)`` in storage order from logit gradients ``(M, B, C)`` in config order.

        ``dW[m] = x^T dlogits[m]`` with config m's seed batch ``x``; ``db[m]`` sums over the batch.
        ``dW`` is a buffer reused by the next call.
        """
        _, b, d = xs.shape
        g = self.to_storage(dlogits)
        for slot, lo, hi in self.groups:
            torch.bmm(xs[slot].t().expand(hi - lo, d, b), g[lo:hi], out=self.grad_w[lo:hi])
        return self.grad_w, g.sum(dim=1)

    @torch.no_grad()
    def predict(self, x: Tensor, lo: int = 0, hi: int | None = None, *, weight: Tensor | None = None,
                bias: Tensor | None = None) -> Tensor:
        """Logits ``(M', N, C)`` of configs ``lo:hi`` (config order) on rows ``x (N, D)``, with the
        current heads or a storage-ordered snapshot of them (``weight`` / ``bias``)."""
        w = self.weight if weight is None else weight
        b = self.bias if bias is None else bias
        m = self.num_configs
        hi = m if hi is None else hi
        if lo == 0 and hi == m:
            return self.to_configs(torch.matmul(x, w) + b.unsqueeze(1))
        if not self.permuted:
            return torch.matmul(x, w[lo:hi]) + b[lo:hi].unsqueeze(1)
        rows = self.storage_of[lo:hi]
        return torch.matmul(x, w.index_select(0, rows)) + b.index_select(0, rows).unsqueeze(1)
