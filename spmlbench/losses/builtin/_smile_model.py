"""SMILE's models (palm-ml/smile@8feb9b8 ``spl_models.py``, ``gen_adj.py``): the kNN graph, DGL's normalised graph
convolution, the released ``MLPNet`` and the label-enhancement model (GCN, ``encoder_z``, decoder), with the
feature bank the GCN reads in both modes (linear: the cached features, fixed; e2e: the backbone's pooled
features, each row refreshed as its batch trains).

The graph: each training row's ``k`` nearest other rows (Euclidean, computed in row chunks, so COCO's 65k rows
need no N x N matrix), edges row -> neighbour, and ``GraphConv(norm="both")``: a message from i to j scaled by
``out_deg(i)^-1/2 in_deg(j)^-1/2`` (degrees clamped to >= 1; a row nobody chose gets its bias only).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from spmlbench.heads.builtin.smile import mlp  # the classifier; the encoder and decoder are MLPs too

CHUNK = 2048  # rows per block of the distance computation


def knn_graph(x: Tensor, k: int, chunk: int = CHUNK) -> Tensor:
    """``(N, k)``: the indices of each row's ``k`` nearest other rows (Euclidean), nearest first."""
    sq = (x * x).sum(dim=1)
    out = []
    for lo in range(0, x.shape[0], chunk):
        block = x[lo:lo + chunk]
        d = sq[lo:lo + chunk, None] + sq[None, :] - 2 * block @ x.t()
        d[torch.arange(block.shape[0]), torch.arange(lo, lo + block.shape[0])] = float("inf")  # not itself
        out.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(out)


class GraphConv(nn.Module):
    """DGL's ``GraphConv(norm="both", allow_zero_in_degree=True)`` over edges ``src -> dst``."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d_in, d_out)))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, h: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """``(N, d_out)`` of node features ``h (N, d_in)``."""
        n = h.shape[0]
        out_deg = torch.bincount(src, minlength=n).clamp_min(1).to(h.dtype)
        in_deg = torch.bincount(dst, minlength=n).clamp_min(1).to(h.dtype)
        msg = (h * out_deg.rsqrt()[:, None])[src]
        agg = torch.zeros(n, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, dst, msg)
        return (agg * in_deg.rsqrt()[:, None]) @ self.weight + self.bias


def seeded_models(dim: int, num_classes: int, seed: int,
                  num_train: int | None = None) -> tuple[nn.Module, LabelEnhancer | None]:
    """The classifier and (given ``num_train``) the label-enhancement model, drawn under ``seed`` in the released
    order (classifier first); the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        f = mlp(dim, num_classes)
        return f, None if num_train is None else LabelEnhancer(dim, num_classes, num_train)


class LabelEnhancer(nn.Module):
    """GCN (d -> C -> C, then Linear C -> C), ``encoder_z`` (d + C -> C) and the decoder (2C -> d); hidden width
    C, as released. ``bank (N, d)`` holds the training rows' features (state: checkpointed), ``nbrs (N, k)``
    their graph (rebuilt from the bank)."""

    def __init__(self, dim: int, num_classes: int, num_train: int) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fc = GraphConv(dim, num_classes), GraphConv(num_classes, num_classes), \
            nn.Linear(num_classes, num_classes)
        self.encoder_z = mlp(dim + num_classes, num_classes)
        self.decoder = mlp(2 * num_classes, dim)
        self.register_buffer("bank", torch.zeros(num_train, dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.bool))
        self.register_buffer("nbrs", torch.zeros(0, 0, dtype=torch.long), persistent=False)

    def build_graph(self, features: Callable[[], Tensor], k: int) -> None:
        """Before an epoch: fill the bank from ``features()`` (N, d) the first time (later epochs keep what the
        training steps wrote), then build the k-NN graph of the bank."""
        if not bool(self.filled):
            self.bank.copy_(features().detach().to(self.bank))
            self.filled.fill_(True)
        self.nbrs = knn_graph(self.bank, k)

    def gcn(self, rows: Tensor) -> Tensor:
        """GCN logits ``(B, C)`` of training ``rows``, computed on the whole graph (as released)."""
        n, k = self.nbrs.shape
        src = torch.arange(n, device=self.bank.device).repeat_interleave(k)
        dst = self.nbrs.flatten()
        return self.fc(self.conv2(torch.relu(self.conv1(self.bank, src, dst)), src, dst))[rows]

    def reconstruct(self, x: Tensor, d1: Tensor) -> tuple[Tensor, Tensor]:
        """``x_rec = decoder([D1, encoder_z([x, D1])])`` and ``y_rec ~ Beta(D1 + 1e-5, 1 - D1 + 1e-5)``."""
        h = self.encoder_z(torch.cat([x, d1], dim=1))
        x_rec = self.decoder(torch.cat([d1, h], dim=1))
        return x_rec, torch.distributions.Beta(d1 + 1e-5, 1 - d1 + 1e-5).rsample()

    def batch_adjacency(self, rows: Tensor) -> Tensor:
        """``A[rows][:, rows]`` of the directed 0/1 graph, float."""
        return (self.nbrs[rows][:, :, None] == rows[None, None, :]).any(dim=1).float()
