"""MIME (Liu et al., ICML 2023) as released: palm-biaoliu/mime@62a0f66.

- ``utils/losses.py``: ``neg_log`` (eps 1e-5), ``loss_VIB`` and ``compute_batch_loss``'s ``(loss / (B C)).sum()``;
- ``train_mime.py`` ``set_pseudo_labeling`` with ``utils/countExpected.py`` ``count_estimate_`` / ``countE``;
- ``lib_lagc/models/encoder.py`` (post-norm encoder layer, decoder layers without self-attention, the
  decoder's final LayerNorm) and ``lib_lagc/models/LEModel.py`` ``LEModel_VIB`` (``proj``, the clamped
  ``z_std``, the mean of 10 ``rsample`` draws, ``GroupWiseLinear``).

The repository has no licence: an independent transcription of the code's behaviour, not a copy. Changes:
dictionaries become arguments; the pseudo-labelling pass takes the predictions it gathered (``total_preds``
in the order of ``total_idx``) instead of running the loader; the head takes the feature map already
flattened with its positional encoding (``position_embedding_sine``, ``lib_lagc/models/backbone.py``, computed
for the map's size: the release computes it once for ``img_size // 32``) and loads its weights from the
suite's head; dropout is off (both run in eval mode).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

LOG_EPSILON = 1e-5


def neg_log(x: Tensor) -> Tensor:
    """``-log(x + 1e-5)``."""
    return -torch.log(x + LOG_EPSILON)


def loss_vib(z: Tensor, target: Tensor, T: float = 1.0) -> Tensor:
    """``loss_VIB``'s main loss: ``p = sigmoid(z / T)``; 1: ``neg_log(p)``, 0: ``neg_log(1 - p)``, -1: 0."""
    preds = torch.sigmoid(z / T)
    loss_mtx = torch.zeros_like(preds)
    loss_mtx[target == 1] = neg_log(preds[target == 1])
    loss_mtx[target == 0] = neg_log(1.0 - preds[target == 0])
    b, c = loss_mtx.shape
    return (loss_mtx / (c * b * torch.ones_like(loss_mtx))).sum()


def count_e(train_labels: np.ndarray) -> float:
    """``countE``: the mean over rows of ``1 / |Y_i|``, a row without positives adding 0."""
    total = 0.0
    for row in train_labels:
        pos = int((row == 1).sum())
        if pos != 0:
            total += 1 / pos
    return total / train_labels.shape[0]


def count_estimate(train_labels: np.ndarray, train_obs: np.ndarray) -> list[float]:
    """``count_estimate_``: per class ``(#observed positives / N) / E`` over the whole training file."""
    e = count_e(train_labels)
    n = train_obs.shape[0]
    return [float((train_obs[:, c] == 1).sum()) / n / e for c in range(train_obs.shape[1])]


def pseudo_label(total_preds: np.ndarray, total_idx: np.ndarray, label_obs: np.ndarray,
                 estimate: list[float]) -> np.ndarray:
    """``set_pseudo_labeling``'s matrix: per class the ``int(estimate_c N_pred)`` unlabelled predicted rows with
    the highest score get -1; observed positives of rows ``j < N_pred`` (dataset index) get 1; the rest 0."""
    n_pred = total_preds.shape[0]
    out = np.zeros_like(label_obs)
    for c in range(total_preds.shape[1]):
        obs_c = label_obs[total_idx, c]
        free_preds, free_idx = total_preds[obs_c == 0, c], total_idx[obs_c == 0]
        chosen = np.flipud(np.argsort(free_preds))[: int(estimate[c] * n_pred)]
        for j in range(n_pred):
            if label_obs[j, c] == 1:
                out[j, c] = 1
        for loc in chosen:
            out[free_idx[loc], c] = -1
    return out


def position_embedding_sine(h: int, w: int, num_pos_feats: int, temperature: float = 10000) -> Tensor:
    """``PositionEmbeddingSine(num_pos_feats, normalize=True)``'s buffer for an ``h x w`` map: (1, 2F, h, w)."""
    ones = torch.ones((1, h, w))
    y_embed, x_embed = ones.cumsum(1, dtype=torch.float32), ones.cumsum(2, dtype=torch.float32)
    y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * 2 * math.pi
    x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = torch.arange(num_pos_feats, dtype=torch.float32)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_pos_feats)
    pos_x, pos_y = x_embed[:, :, :, None] / dim_t, y_embed[:, :, :, None] / dim_t
    pos_x = torch.stack((pos_x[:, :, :, 0::2].sin(), pos_x[:, :, :, 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[:, :, :, 0::2].sin(), pos_y[:, :, :, 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


class _EncoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, src: Tensor, pos: Tensor) -> Tensor:
        q = k = src + pos
        src = self.norm1(src + self.self_attn(q, k, value=src)[0])
        return self.norm2(src + self.linear2(torch.relu(self.linear1(src))))


class _DecoderLayer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d, heads)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, tgt: Tensor, memory: Tensor, pos: Tensor, query_pos: Tensor) -> Tensor:
        tgt = self.norm2(tgt + self.multihead_attn(query=tgt + query_pos, key=memory + pos, value=memory)[0])
        return self.norm3(tgt + self.linear2(torch.relu(self.linear1(tgt))))


class LEModelVIBHead(nn.Module):
    """``LEModel_VIB`` after the backbone: sequence-first transformer, decoder norm, ``proj``, VIB, fc."""

    def __init__(self, d: int, num_classes: int, z_dim: int, heads: int = 4) -> None:
        super().__init__()
        self.encoder = _EncoderLayer(d, heads, 4 * d)
        self.decoder = nn.ModuleList([_DecoderLayer(d, heads, 4 * d) for _ in range(2)])
        self.decoder_norm = nn.LayerNorm(d)
        self.query_embed = nn.Embedding(num_classes, d)
        self.proj = nn.Sequential(nn.Linear(d, d), nn.ReLU(inplace=True), nn.Linear(d, 2 * z_dim))
        self.W, self.b = nn.Parameter(torch.empty(1, num_classes, z_dim)), nn.Parameter(torch.empty(1, num_classes))
        self.feat_dim = z_dim

    def forward(self, src: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``src``, ``pos``: (hw, B, D). Returns ``(logits, z_mu, z_std)``."""
        memory = self.encoder(src, pos)
        query = self.query_embed.weight.unsqueeze(1).repeat(1, src.shape[1], 1)
        out = torch.zeros_like(query)
        for layer in self.decoder:
            out = layer(out, memory, pos, query)
        stats = self.proj(self.decoder_norm(out).transpose(0, 1))  # (B, C, 2 z)
        z_mu = stats[:, :, : self.feat_dim]
        z_std = torch.exp(torch.clamp(stats[:, :, self.feat_dim:] / 2, min=-6, max=6))
        z = torch.distributions.normal.Normal(z_mu, z_std).rsample((10,)).mean(dim=0)
        return (self.W * z).sum(-1) + self.b, z_mu, z_std

    def load_suite(self, head: nn.Module) -> None:
        """Copy the weights of a :class:`spmlbench.heads.builtin.mime.MIMEHead`."""
        def block(dst: nn.Module, src: nn.Module, attn: str, norms: tuple[str, str]) -> None:
            getattr(dst, attn).load_state_dict(src.attn.state_dict())
            dst.linear1.load_state_dict(src.ffn[0].state_dict())
            dst.linear2.load_state_dict(src.ffn[3].state_dict())
            getattr(dst, norms[0]).load_state_dict(src.norm1.state_dict())
            getattr(dst, norms[1]).load_state_dict(src.norm2.state_dict())

        with torch.no_grad():
            block(self.encoder, head.encoder, "self_attn", ("norm1", "norm2"))
            for dst, src in zip(self.decoder, head.decoders):
                block(dst, src, "multihead_attn", ("norm2", "norm3"))
            self.decoder_norm.load_state_dict(head.norm.state_dict())
            self.query_embed.weight.copy_(head.queries)
            self.proj.load_state_dict(head.proj.state_dict())
            self.W.copy_(head.weight[None])
            self.b.copy_(head.bias[None])
