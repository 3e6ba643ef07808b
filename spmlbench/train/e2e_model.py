"""The end-to-end model: a registered backbone and a registered head (:mod:`spmlbench.heads`), initialised from
the job's seed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spmlbench.errors import ConfigError
from spmlbench.features.backbones import feature_map


class E2EModel(nn.Module):
    """Backbone (B, 3, H, W) -> (B, D) (or the map (B, D, h, w) for a ``spatial`` head) plus the head; the
    backbone may run under autocast, the head always in float32 (fp32 logits: no bf16 ties in the sigmoid scores)."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int, head: nn.Module, spatial: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.spatial = spatial
        self._trainable = [p for p in backbone.parameters() if p.requires_grad]  # MIME keeps its stem frozen

    def features(self, x: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """The head's input, float32: pooled features (B, D), or the map (B, D, h, w) for a spatial head."""
        if amp_dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=amp_dtype):
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        return feats.float() if self.spatial else feats.float().flatten(1)

    def forward(self, x: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Logits (B, C) float32."""
        return self.head(self.features(x, amp_dtype))

    def penalty(self) -> torch.Tensor | float:
        """A head's own term of the training objective (MIME's ``beta * KL``), 0 for the others."""
        fn = getattr(self.head, "penalty", None)
        return fn() if fn is not None else 0.0

    def freeze_backbone(self, frozen: bool) -> None:
        """Stop (or restart) gradients into the backbone (GR's ``linear_init`` epochs).

        Only the weights are frozen: the model stays in train mode, so batch-norm running
        statistics still update (``requires_grad``-style freezing, as in the reference codes).
        """
        for p in self._trainable:
            p.requires_grad_(not frozen)


def build_model(backbone: str, weights: str, num_classes: int, seed: int, head: str = "linear",
                options: Any = None) -> tuple[E2EModel, Any]:
    """The job's model: registry backbone (``weights`` default|none), then the registered head ``head``
    (:mod:`spmlbench.heads`) built from the seed with ``options`` (the job's hyperparameters): on the pooled
    features, or on the backbone's feature map for a head that consumes the map (with the backbone change the
    head asks for, e.g. MIME's frozen batch norm)."""
    from spmlbench.features.backbones import get_backbone
    from spmlbench.heads import HEADS

    spec = get_backbone(backbone)
    if spec.arch is None:
        raise ConfigError(f"backbone {backbone!r}: has no trainable network; use resnet50 (or resnet18) for mode e2e")
    head_def = HEADS.get(head)
    net = spec.build(weights)
    spatial = head_def.consumes == "map"
    if spatial:
        net = feature_map(net)
    if head_def.backbone is not None:
        net = head_def.backbone(net)
    module = head_def.build(spec.dim, num_classes, seed, head_def.make_options(options))
    return E2EModel(net, spec.dim, num_classes, module, spatial=spatial), spec
