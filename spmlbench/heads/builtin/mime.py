"""MIME's head (Liu et al., ICML 2023; palm-biaoliu/mime@62a0f66 ``LEModel_VIB``): a query transformer over the
backbone's feature map with a variational information bottleneck per class.

``F (B, D, h, w)`` + a sine positional encoding -> 1 encoder layer (4 heads, FFN 4D, dropout 0.1) -> 2 decoder
layers without self-attention, whose C learned queries attend to the encoded map, then the decoder's final
LayerNorm (``lib_lagc/models/encoder.py`` ``decoder_norm``) -> per class ``h_c`` ->
``MLP(D -> D -> 2 z_dim)``: ``mu_c``, ``sigma_c = exp(clamp(s / 2, -6, 6))``; ``z_c`` is the mean of ``samples``
reparameterised draws (also at evaluation, as released); ``logit_c = W_c . z_c + b_c`` (one linear map per
class). ``penalty()`` is ``beta * KL``, ``KL = -1/2 mean(1 + 2 log sigma - mu^2 - sigma^2)``, of the last forward.
Post-norm layers, DETR's positional encoding added to queries and keys (not values), as released.
Initialisation as released: the transformer's matrices xavier-uniform (``Encoder._reset_parameters``), the
queries N(0, 1) (``nn.Embedding``), ``proj`` PyTorch's default ``nn.Linear`` init, the per-class ``W_c``
and ``b_c`` uniform in ``+-1 / sqrt(z_dim)`` (``GroupWiseLinear.reset_parameters``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import Tensor, nn

from spmlbench.heads.registry import Method, register_head
from spmlbench.hparams import HParams

MIME = dict(paper="Liu et al., ICML", year=2023,
            citation="Liu et al. Revisiting Pseudo-Label for Single-Positive Multi-Label Learning (MIME). ICML 2023. "
                     "Code: github.com/palm-biaoliu/mime (62a0f66).")


@dataclasses.dataclass(frozen=True)
class MIMEHeadOptions(HParams):
    """The bottleneck's ``z_dim``, its ``samples`` per forward and the KL weight ``beta`` (the release's values)."""

    beta: float = 1e-4
    z_dim: int = 256
    samples: int = 10

    def check(self) -> None:
        self.nonnegative("beta")
        self.require("z_dim", self.z_dim >= 1, ">= 1")
        self.require("samples", self.samples >= 1, ">= 1")


def sine_position(h: int, w: int, dim: int, device: torch.device) -> Tensor:
    """DETR's normalised sine encoding ``(h w, dim)``: half the channels for y, half for x; positions
    ``i / (h + 1e-6) 2 pi`` as released (``PositionEmbeddingSine(normalize=True)``)."""
    half = dim // 2
    ys = (torch.arange(1, h + 1, device=device, dtype=torch.float32) / (h + 1e-6)) * 2 * math.pi
    xs = (torch.arange(1, w + 1, device=device, dtype=torch.float32) / (w + 1e-6)) * 2 * math.pi
    freq = 10000 ** (2 * (torch.arange(half, device=device) // 2) / half)
    py, px = ys[:, None] / freq, xs[:, None] / freq  # (h, half), (w, half)
    py = torch.stack([py[:, 0::2].sin(), py[:, 1::2].cos()], dim=2).flatten(1)
    px = torch.stack([px[:, 0::2].sin(), px[:, 1::2].cos()], dim=2).flatten(1)
    pos = torch.cat([py[:, None, :].expand(h, w, half), px[None, :, :].expand(h, w, half)], dim=2)
    return pos.reshape(h * w, 2 * half)


class _Block(nn.Module):
    """Attention (to ``memory``) + FFN, post-norm."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(d, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, residual: Tensor) -> Tensor:
        x = self.norm1(residual + self.drop(self.attn(q, k, v, need_weights=False)[0]))
        return self.norm2(x + self.drop(self.ffn(x)))


class MIMEHead(nn.Module):
    """Feature map ``(B, D, h, w)`` -> logits ``(B, C)`` (see the module docstring)."""

    def __init__(self, dim: int, num_classes: int, *, z_dim: int = 256, heads: int = 4, samples: int = 10,
                 beta: float = 1e-4, dropout: float = 0.1) -> None:
        super().__init__()
        heads = heads if dim % heads == 0 else 1
        self.encoder = _Block(dim, heads, 4 * dim, dropout)
        self.decoders = nn.ModuleList([_Block(dim, heads, 4 * dim, dropout) for _ in range(2)])
        self.norm = nn.LayerNorm(dim)
        for p in [*self.encoder.parameters(), *self.decoders.parameters()]:
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.queries = nn.Parameter(torch.randn(num_classes, dim))
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, 2 * z_dim))
        self.weight, self.bias = group_linear(num_classes, z_dim)
        self.samples, self.beta, self.z_dim = int(samples), float(beta), int(z_dim)
        self._kl: Tensor | None = None

    def forward(self, fmap: Tensor) -> Tensor:
        b, d, h, w = fmap.shape
        src = fmap.flatten(2).transpose(1, 2)  # (B, hw, D)
        pos = sine_position(h, w, d, fmap.device).to(src.dtype)[None]
        mem = self.encoder(src + pos, src + pos, src, src)
        q = self.queries[None].expand(b, -1, -1)
        tgt = torch.zeros_like(q)
        for layer in self.decoders:
            tgt = layer(tgt + q, mem + pos, mem, tgt)
        z, self._kl = vib_sample(self.proj(self.norm(tgt)), self.z_dim, self.samples)  # (B, C, 2 z) -> (B, C, z)
        return (z * self.weight).sum(dim=-1) + self.bias

    def penalty(self) -> Tensor:
        """``beta * KL`` of the last forward (added to the loss by the trainer)."""
        assert self._kl is not None, "forward first"
        return self.beta * self._kl


def group_linear(num_classes: int, z_dim: int) -> tuple[nn.Parameter, nn.Parameter]:
    """``(W (C, z_dim), b (C,))`` uniform in ``+-1 / sqrt(z_dim)``, as the release's ``GroupWiseLinear``."""
    bound = 1.0 / math.sqrt(z_dim)
    return (nn.Parameter(torch.empty(num_classes, z_dim).uniform_(-bound, bound)),
            nn.Parameter(torch.empty(num_classes).uniform_(-bound, bound)))


def vib_sample(stats: Tensor, z_dim: int, samples: int) -> tuple[Tensor, Tensor]:
    """``(z, KL)`` from ``stats (..., 2 z_dim)``: ``mu``, ``sigma = exp(clamp(s / 2, -6, 6))``, ``z`` the mean of
    ``samples`` reparameterised draws, ``KL = -1/2 mean(1 + 2 log sigma - mu^2 - sigma^2)``."""
    mu, s = stats[..., :z_dim], stats[..., z_dim:]
    sigma = torch.exp(torch.clamp(s / 2, -6, 6))
    eps = torch.randn(samples, *mu.shape, device=mu.device, dtype=mu.dtype)
    return (mu + sigma * eps).mean(dim=0), -0.5 * torch.mean(1 + 2 * torch.log(sigma) - mu**2 - sigma**2)


def freeze_for_mime(fmap: nn.Module) -> nn.Module:
    """MIME's backbone: the feature map with every batch norm frozen (``FrozenBatchNorm2d``) and the stem and
    layer1 not trained (palm-biaoliu/mime backbone.py)."""
    from torchvision.ops import FrozenBatchNorm2d

    def freeze(module: nn.Module) -> nn.Module:
        for name, child in module.named_children():
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key).detach())
                setattr(module, name, frozen)
            else:
                freeze(child)
        return module

    fmap = freeze(fmap)
    for i in (0, 1, 4):  # conv1, bn1, layer1
        for p in fmap[i].parameters():
            p.requires_grad_(False)
    return fmap


def build_mime(dim: int, num_classes: int, seed: int, options: Any) -> MIMEHead:
    """MIME's head, drawn under ``seed`` (the global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MIMEHead(dim, num_classes, z_dim=options.z_dim, samples=options.samples, beta=options.beta)


register_head("mime", build=build_mime, title="MIME's query transformer with a variational bottleneck",
              consumes="map", modes=("e2e",), options=MIMEHeadOptions, backbone=freeze_for_mime,
              citation=MIME["citation"],
              methods=(Method("mime", loss="mime", meta={
                  "title": "MIME: variational query head + prior-based ignoring", **MIME, "order": 155}),))
