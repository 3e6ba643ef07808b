"""MIME-VIB, MIME's pooled-feature variant (linear mode; spmlbench's re-design, not the released model): MIME's
bottleneck on pooled features ``(B, D)``: one ``MLP(D -> D -> C 2 z_dim)`` gives every class its ``mu_c``,
``sigma_c``; then as MIME's head (:mod:`spmlbench.heads.builtin.mime`, its initialisations included). Method
``mime_vib``: this head with MIME's loss and prior-based pseudo-labelling, on the cached pooled features. The
released query transformer attends over the spatial map and runs as method ``mime`` in mode e2e.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from spmlbench.heads.builtin.mime import MIME, MIMEHeadOptions, group_linear, vib_sample
from spmlbench.heads.registry import Method, register_head


class VIBHead(nn.Module):
    """MIME's bottleneck on pooled features ``(B, D)`` (loss ``mime_vib``, linear mode; a re-design): one
    ``MLP(D -> D -> C 2 z_dim)`` gives every class its ``mu_c``, ``sigma_c``; then as :class:`MIMEHead` (its
    initialisations included)."""

    def __init__(self, dim: int, num_classes: int, *, z_dim: int = 256, samples: int = 10, beta: float = 1e-4) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, num_classes * 2 * z_dim))
        self.weight, self.bias = group_linear(num_classes, z_dim)
        self.c, self.z_dim, self.samples, self.beta = num_classes, int(z_dim), int(samples), float(beta)
        self._kl: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        z, self._kl = vib_sample(self.proj(x).view(x.shape[0], self.c, 2 * self.z_dim), self.z_dim, self.samples)
        return (z * self.weight).sum(dim=-1) + self.bias

    def penalty(self) -> Tensor:
        """``beta * KL`` of the last forward."""
        assert self._kl is not None, "forward first"
        return self.beta * self._kl


def build_vib(dim: int, num_classes: int, seed: int, options: Any) -> VIBHead:
    """The VIB head, drawn from the global RNG (the cached-input trainer seeds it with the job's seed and trains
    on in the same stream, as MIME's sampling does)."""
    return VIBHead(dim, num_classes, z_dim=options.z_dim, samples=options.samples, beta=options.beta)


register_head("vib", build=build_vib, title="MIME's bottleneck on pooled features (spmlbench's re-design)",
              consumes="pooled", modes=("linear",), options=MIMEHeadOptions,
              methods=(Method("mime_vib", loss="mime", meta={
                  "title": "MIME-VIB: MIME's loss and ignoring with a bottleneck head on pooled features "
                           "(linear re-design)",
                  "paper": MIME["paper"], "year": MIME["year"], "order": 156,
                  "citation": "After Liu et al. Revisiting Pseudo-Label for Single-Positive Multi-Label Learning "
                              "(MIME). ICML 2023; the pooled-feature head is spmlbench's re-design."}),))
