"""The end-to-end model: a registered backbone and its head (linear; BoostLU's boosted CAM; MIME's query head;
SMILE's MLP classifier), initialised from the job's seed."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spmlbench.errors import ConfigError
from spmlbench.features.backbones import feature_map

HEADS = ("linear", "boostlu", "mime", "smile")
LINEAR_INIT_HEADS = ("linear", "boostlu")  # heads a linear head loads into (LinearInit's hand-over)


class BoostLUHead(nn.Module):
    """BoostLU (Kim et al., CVPR 2023) on a feature map ``F (B, D, h, w)``::

        CAM = W F + b            (a 1x1 convolution: ``weight (C, D)``, ``bias (C,)``)
        logit_c = mean_hw(where(CAM > 0, alpha CAM, CAM))

    in training and inference. The parameters are named like ``nn.Linear``'s, so a linear head (LinearInit's
    linear phase) loads into it; with ``alpha = 1`` it computes the linear head on the average-pooled map.
    """

    def __init__(self, dim: int, num_classes: int, alpha: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))
        self.alpha = float(alpha)

    def cam(self, fmap: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``(B, C, h, w)``."""
        return torch.einsum("bdhw,cd->bchw", fmap, self.weight) + self.bias.view(1, -1, 1, 1)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, C)``: the boosted CAM averaged over the map."""
        cam = self.cam(fmap)
        return torch.where(cam > 0, self.alpha * cam, cam).mean(dim=(2, 3))


class E2EModel(nn.Module):
    """Backbone (B, 3, H, W) -> (B, D) (or the map (B, D, h, w) for a ``spatial`` head) plus the head; the
    backbone may run under autocast, the head always in float32 (fp32 logits: no bf16 ties in the sigmoid scores)."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int, head: nn.Module | None = None,
                 spatial: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else nn.Linear(dim, num_classes)
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


def mime_backbone(net: nn.Module) -> nn.Module:
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

    fmap = freeze(feature_map(net))
    for i in (0, 1, 4):  # conv1, bn1, layer1
        for p in fmap[i].parameters():
            p.requires_grad_(False)
    return fmap


def build_model(backbone: str, weights: str, num_classes: int, seed: int, head: str = "linear",
                options: dict[str, Any] | None = None) -> tuple[E2EModel, Any]:
    """The job's model: registry backbone (``weights`` default|none), the head (``linear``; ``boostlu`` with
    ``alpha``; ``mime`` with ``z_dim``, ``samples``, ``beta``; ``smile``: the released MLP classifier) and its
    init from the seed (the linear head's for linear and boostlu; MIME's and SMILE's drawn under the seed)."""
    from spmlbench.features.backbones import get_backbone
    from spmlbench.train.seeding import head_init

    spec = get_backbone(backbone)
    if spec.arch is None:
        raise ConfigError(f"backbone {backbone!r}: has no trainable network; use resnet50 (or resnet18) for mode e2e")
    if head not in HEADS:
        raise ConfigError(f"head {head!r}: unknown; choose one of: {', '.join(HEADS)}")
    net = spec.build(weights)
    opts = dict(options or {})
    if head == "mime":
        from spmlbench.train.mime_head import MIMEHead

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mime = MIMEHead(spec.dim, num_classes, **opts)
        return E2EModel(mime_backbone(net), spec.dim, num_classes, mime, spatial=True), spec
    if head == "smile":
        from spmlbench.losses.builtin._smile_model import seeded_models

        return E2EModel(net, spec.dim, num_classes, seeded_models(spec.dim, num_classes, seed)[0]), spec
    if head == "boostlu":
        model = E2EModel(feature_map(net), spec.dim, num_classes,
                         BoostLUHead(spec.dim, num_classes, float(opts.get("alpha", 1.0))), spatial=True)
    else:
        model = E2EModel(net, spec.dim, num_classes)
    w, b = head_init(seed, spec.dim, num_classes)
    with torch.no_grad():
        model.head.weight.copy_(w)
        model.head.bias.copy_(b)
    return model, spec
