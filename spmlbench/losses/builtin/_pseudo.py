"""What the CLIP pseudo-label losses (VLPL, AEVLP) share: the pseudo-label rules and the per-epoch
pseudo-label table of a batched loss.

The image-class cosines come from the cache ``spmlbench pseudo-labels`` writes (``(N, 2, V, C)``:
training row, plain / flipped, view, class). Before each epoch the loss draws every row's flips under
its config's seed (:func:`spmlbench.flips.view_flips`; view 0 is the flip the training image gets in
the end-to-end modes), applies its rule once for all training rows and keeps the result as a table
``(M, N, C)`` (1 pseudo positive, -1 pseudo negative, 0 none); a step only looks its rows up.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.flips import view_flips
from spmlbench.losses.base import BatchedLoss, rows_of

CHUNK = 4096  # rows per pass of a rule (bounds the (rows, V, C) working set)


def vlpl_rule(cos: Tensor, temp: float, threshold: float, partial: float = 0.0) -> Tensor:
    """VLPL (Xing et al. 2024): 1 where ``softmax(cos / temp) > threshold`` over classes; with ``partial > 0``
    the ``floor(partial C)`` lowest-scored classes are -1 (the paper's negatives; off as released).
    ``cos (N, C)`` -> int8 ``(N, C)``."""
    s = torch.softmax(cos / temp, dim=-1)
    out = (s > threshold).to(torch.int8)
    k = int(partial * cos.shape[-1])
    if k > 0:
        out.scatter_(-1, torch.topk(s, k, dim=-1, largest=False).indices, -1)
    return out


def damp_rule(cos: Tensor, observed: Tensor, *, temp: float, eta: float, threshold: float, top_k: int,
              neg_ratio: float, negatives: bool = False) -> Tensor:
    """DAMP (Tran et al. 2025) on ``cos (N, V, C)`` (view 0 the global image, 1.. the grid tiles) and the
    single positives ``observed (N, C)``; int8 ``(N, C)``.

    ``s = softmax(cos / temp)`` per view; over the tiles ``a = max``, ``b = min``, ``avg = mean``;
    ``eta_i = min(s_g[i, observed class], eta)``; ``s_ag = a where a > eta_i else b``;
    ``s_final = (s_g + s_ag) / 2``; positives: among the ``top_k`` classes of ``s_final``, those with
    ``s_final >= threshold``. The ``floor(neg_ratio C)`` lowest of ``(s_g + avg) / 2`` are written as 0
    (as released: this only erases coinciding positives) or, with ``negatives``, as -1.
    """
    s = torch.softmax(cos / temp, dim=-1)
    s_g, tiles = s[:, 0], s[:, 1:]
    a, b, avg = tiles.amax(dim=1), tiles.amin(dim=1), tiles.mean(dim=1)
    s_obs = torch.where(observed, s_g, torch.zeros_like(s_g)).amax(dim=-1, keepdim=True)
    eta_i = torch.clamp(s_obs, max=eta)
    s_final = (s_g + torch.where(a > eta_i, a, b)) / 2
    top = torch.zeros_like(s_final, dtype=torch.bool)
    top.scatter_(-1, torch.topk(s_final, min(top_k, s.shape[-1]), dim=-1).indices, True)
    out = (top & (s_final >= threshold)).to(torch.int8)
    k = int(neg_ratio * s.shape[-1])
    if k > 0:
        out.scatter_(-1, torch.topk((s_g + avg) / 2, k, dim=-1, largest=False).indices, -1 if negatives else 0)
    return out


class PseudoLabelLoss(BatchedLoss):
    """A batched loss whose targets include pseudo-labels from a CLIP cache (``pseudo_source``).

    ``attach_pseudo(cos)`` gives the training rows' cosines ``(N, 2, V, C)`` (the trainer does it from
    ``<home>/<ds>/pseudo/<source>.parquet``); ``init_state`` the observed matrix and each config's seed.
    Subclasses set ``pseudo_source`` and implement :meth:`views` and :meth:`rule`.
    """

    needs_rows = True
    pseudo_source: ClassVar[str] = ""

    def __init__(self, hparams: Any, num_classes: int, num_train: int | None = None) -> None:
        super().__init__(hparams, num_classes, num_train)
        assert num_train is not None
        self.register_buffer("pl", torch.zeros(self.num_configs, num_train, num_classes, dtype=torch.int8))
        self.register_buffer("observed", torch.zeros(num_train, num_classes, dtype=torch.bool))
        self.seeds = [0] * self.num_configs
        self.cos: Tensor | None = None  # data, not state: not in the state dict

    def views(self, hp: Any) -> int:
        """Views per image the rule reads (VLPL 1; DAMP 1 + grid^2)."""
        raise NotImplementedError

    def rule(self, hp: Any, cos: Tensor, observed: Tensor) -> Tensor:
        """Pseudo-labels int8 ``(n, C)`` of ``n`` rows from their cosines ``(n, V, C)``."""
        raise NotImplementedError

    def init_state(self, observed_train: Tensor, seed: Any = 0) -> None:
        """The (N, C) training observed matrix and the configs' seeds (one int, or one per config)."""
        self.observed.copy_(observed_train.to(self.observed.device) > 0.5)
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)] * self.num_configs
        self.seeds = [int(s) for s in seeds]

    def attach_pseudo(self, cos: Tensor) -> None:
        """The cached cosines of the training rows, ``(N, 2, V, C)`` (ConfigError when they do not fit)."""
        want = (self.num_train, 2, max(self.views(h) for h in self.hparams), self.num_classes)
        if tuple(cos.shape) != want or any(self.views(h) != want[2] for h in self.hparams):
            raise ConfigError(f"{self.hparams_cls.loss}: the {self.pseudo_source} pseudo-label cache has shape "
                              f"{tuple(cos.shape)}, the loss needs {want}; rebuild it with 'spmlbench pseudo-labels "
                              f"<dataset> --source {self.pseudo_source}' (grid and dataset as the loss's)")
        self.cos = cos.float()

    @torch.no_grad()
    def start_epoch(self, epoch: int, num_epochs: int) -> None:
        """Draw this epoch's flips per config and rebuild the pseudo-label table."""
        super().start_epoch(epoch, num_epochs)
        if self.cos is None:
            raise ConfigError(f"{self.hparams_cls.loss}: no pseudo-label cache attached; run 'spmlbench "
                              f"pseudo-labels <dataset> --source {self.pseudo_source}' first")
        n, _, v, _ = self.cos.shape
        dev = self.pl.device
        if self.cos.device != dev:
            self.cos = self.cos.to(dev)  # once: the table is re-read every epoch
        cos = self.cos
        for m, hp in enumerate(self.hparams):
            flips = torch.from_numpy(view_flips(self.seeds[m], epoch, np.arange(n), v).astype(np.int64)).to(dev)
            for lo in range(0, n, CHUNK):
                hi = min(lo + CHUNK, n)
                rows = cos[lo:hi].gather(1, flips[lo:hi, None, :, None].expand(-1, 1, -1, cos.shape[-1]))[:, 0]
                self.pl[m, lo:hi] = self.rule(hp, rows, self.observed[lo:hi])

    def batch_pl(self, index: Tensor, like: Tensor) -> Tensor:
        """The pseudo-labels of the batch's rows, ``(M, B, C)`` int8 on ``like``'s device."""
        return rows_of(self.pl, index).to(like.device)
