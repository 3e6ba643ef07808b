"""The end-to-end model: a registered backbone and a linear head, initialised from the job's seed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spmlbench.errors import ConfigError


class E2EModel(nn.Module):
    """Backbone (B, 3, H, W) -> (B, D) plus a linear head; the backbone may run under autocast,
    the head always in float32 (fp32 logits: no bf16 ties in the sigmoid scores)."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Logits (B, C) float32."""
        if amp_dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=amp_dtype):
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        return self.head(feats.float().flatten(1))

    def freeze_backbone(self, frozen: bool) -> None:
        """Stop (or restart) gradients into the backbone (GR's ``linear_init`` epochs).

        Only the weights are frozen: the model stays in train mode, so batch-norm running
        statistics still update (``requires_grad``-style freezing, as in the reference codes).
        """
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)


def build_model(backbone: str, weights: str, num_classes: int, seed: int) -> tuple[E2EModel, Any]:
    """The job's model: registry backbone (``weights`` default|none) and the seed's head init."""
    from spmlbench.features.backbones import get_backbone
    from spmlbench.train.seeding import head_init

    spec = get_backbone(backbone)
    if spec.arch is None:
        raise ConfigError(f"backbone {backbone!r}: has no trainable network; use resnet50 (or resnet18) for mode e2e")
    net = spec.build(weights)
    model = E2EModel(net, spec.dim, num_classes)
    w, b = head_init(seed, spec.dim, num_classes)
    with torch.no_grad():
        model.head.weight.copy_(w)
        model.head.bias.copy_(b)
    return model, spec
