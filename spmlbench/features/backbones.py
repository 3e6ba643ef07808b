"""Backbone registry: which network turns an image into a feature vector, with what weights and transform.

Each :class:`BackboneSpec` states its weights, its transform (in words, recorded in the feature
cache), its input size and its output dimension, and builds a module mapping a float batch to
(B, D) features. Images are decoded and resized on the CPU (:meth:`BackboneSpec.load_image`,
exactly as ``torchvision.transforms.Resize`` does on PIL images) and kept as uint8; the
``ToTensor`` scaling and the normalisation run on the compute device (:meth:`BackboneSpec.prepare`),
which quarters the host-to-device traffic and keeps the arithmetic identical to the reference
transform (``x.float().div(255)``, then ``sub(mean).div(std)``).

``pixels`` is the offline default of the ``digits`` dataset: no weights to download (the suite's
first run must work without network), deterministic (grayscale, bilinear resize to 32 x 32,
flattened, scaled to [0, 1]), and, for synthetic digit grids, a linear probe on raw pixels is a
meaningful task (each digit sits in a fixed cell, so a class is a linear template over pixels).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from spmlbench.errors import ConfigError, DataError
from spmlbench.registry import Registry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_CHOICES = ("default", "none")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One backbone: ``weights`` names the torchvision weights (``"none"``: nothing to load).

    ``arch``: torchvision model builder name (``None`` for a weight-free backbone);
    ``mode``: PIL mode images are converted to (``"RGB"`` or ``"L"``); ``normalize``: whether the
    ImageNet mean/std normalisation is applied after scaling to [0, 1].
    """

    name: str
    weights: str
    transform: str
    image_size: int
    dim: int
    arch: str | None = None
    mode: str = "RGB"
    normalize: bool = True
    description: str = ""

    @property
    def needs_weights(self) -> bool:
        """True when the default build loads pretrained weights."""
        return self.arch is not None and self.weights != "none"

    def weights_label(self, weights: str = "default") -> str:
        """The weights recorded in the cache: the torchvision weights name, or ``"none"``."""
        check_weights_choice(weights)
        return "none" if weights == "none" or not self.needs_weights else self.weights

    def transform_text(self, image_size: int | None = None) -> str:
        """The transform description at an (optionally overridden) image size."""
        size = image_size or self.image_size
        return self.transform.format(size=size)

    def load_image(self, path: str | os.PathLike[str], image_size: int | None = None) -> np.ndarray:
        """Open an image, convert it to ``mode`` and resize it (bilinear, no crop): uint8 (H, W[, 3])."""
        size = image_size or self.image_size
        with Image.open(path) as img:
            img = img.convert(self.mode)
            # torchvision Resize((h, w)) on a PIL image is PIL's bilinear resize with antialias.
            img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.array(img, dtype=np.uint8, copy=True)

    def prepare(self, batch: torch.Tensor, *, channels_last: bool = False) -> torch.Tensor:
        """uint8 (B, H, W, 3) or (B, H, W) on the compute device -> the model's float32 input.

        Same arithmetic as ``ToTensor`` + ``Normalize``: divide by 255, then subtract the mean
        and divide by the std, in float32.
        """
        if batch.ndim == 4:
            x = batch.permute(0, 3, 1, 2)  # a view: NCHW shape with channels_last strides
            if not channels_last:
                x = x.contiguous()
        else:
            x = batch
        x = x.float().div_(255)
        if self.normalize:
            mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            x = x.sub_(mean).div_(std)
        return x

    def build(self, weights: str = "default") -> nn.Module:
        """The feature network in eval mode; ``weights="none"`` gives a random (seeded) init.

        Pretrained weights are read from the torch hub cache (downloaded there if the network
        allows); when that fails a one-line DataError says where to put the file.
        """
        check_weights_choice(weights)
        if self.arch is None:
            return nn.Flatten().eval()
        import torchvision

        builder = getattr(torchvision.models, self.arch)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(0)  # "none": the same random network on every run
            model = builder(weights=None)
        if weights != "none" and self.needs_weights:
            model.load_state_dict(load_state_dict(self))
        _strip_classifier(model)
        return model.eval()


def feature_map(net: nn.Module) -> nn.Module:
    """A built ResNet cut before its average pool: images -> the layer4 map ``(B, D, h, w)``."""
    return nn.Sequential(*list(net.children())[:-2])


def check_weights_choice(weights: str) -> None:
    """Raise ConfigError unless ``weights`` is ``"default"`` or ``"none"``."""
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"--weights {weights!r}: unknown choice; use one of: {', '.join(WEIGHT_CHOICES)}")


def _strip_classifier(model: nn.Module) -> None:
    """Replace the classification head by the identity so the model returns pooled features."""
    if not hasattr(model, "fc"):  # pragma: no cover - every registered arch is a ResNet
        raise ValueError(f"{type(model).__name__}: no classifier head 'fc' to remove")
    model.fc = nn.Identity()


def weights_enum(spec: BackboneSpec) -> Any:
    """The torchvision weights enum member named by ``spec.weights`` (e.g. ``ResNet50_Weights.IMAGENET1K_V1``)."""
    import torchvision

    return torchvision.models.get_weight(spec.weights)


def weights_cache_path(spec: BackboneSpec) -> Path:
    """Where torchvision looks for the weight file: ``torch.hub.get_dir()/checkpoints/<file name of the URL>``."""
    url = weights_enum(spec).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def fetch_state_dict(url: str, progress: bool = False) -> dict[str, Any]:
    """Load a state dict through the torch hub cache (downloads into it when the network allows)."""
    return torch.hub.load_state_dict_from_url(url, progress=progress, check_hash=True, map_location="cpu")


def load_state_dict(spec: BackboneSpec) -> dict[str, Any]:
    """The pretrained state dict of ``spec``; a missing, unreachable or corrupt file raises one-line DataError."""
    url = weights_enum(spec).url
    target = weights_cache_path(spec)
    try:
        return fetch_state_dict(url)
    except Exception as exc:  # URLError/OSError offline, RuntimeError on a bad hash or a corrupt file
        problem = "could not be read" if target.exists() else "not in the torch hub cache and could not be downloaded"
        raise DataError(
            f"{target}: {spec.weights} weights for backbone {spec.name!r} {problem} "
            f"({type(exc).__name__}); download {url} on a machine with network and place the file at "
            f"exactly that path (torch.hub.get_dir()/checkpoints/; set TORCH_HOME to move it), "
            f"or pass --weights none for a random init"
        ) from exc


BACKBONES: Registry[BackboneSpec] = Registry("backbone")

_RESIZE = "PIL open .convert('RGB'), Resize(({size}, {size})) bilinear no crop, ToTensor, ImageNet mean/std"

def _resnet(depth: int, dim: int, note: str = "") -> BackboneSpec:
    """torchvision ResNet-``depth`` with its ImageNet IMAGENET1K_V1 weights, fc removed, global average pool."""
    return BackboneSpec(name=f"resnet{depth}", weights=f"ResNet{depth}_Weights.IMAGENET1K_V1", transform=_RESIZE,
                        image_size=448, dim=dim, arch=f"resnet{depth}",
                        description=f"torchvision ResNet-{depth}, ImageNet IMAGENET1K_V1{note}, fc removed, "
                        "global average pool")


BACKBONES.add("resnet50", _resnet(50, 2048, " (the papers' weights)"))
BACKBONES.add("resnet101", _resnet(101, 2048))
BACKBONES.add("resnet18", _resnet(18, 512, " (small: quick CPU runs)"))
BACKBONES.add(
    "pixels",
    BackboneSpec(
        name="pixels",
        weights="none",
        transform="PIL open .convert('L'), bilinear resize to {size}x{size}, flattened, /255 (no weights)",
        image_size=32,
        dim=32 * 32,
        arch=None,
        mode="L",
        normalize=False,
        description="raw grayscale pixels: the offline default of digits (no weight download; "
        "a linear probe on pixels separates digit templates)",
    ),
)


def get_backbone(name: str) -> BackboneSpec:
    """Return a registered backbone (ConfigError listing the known names otherwise)."""
    return BACKBONES.get(name)


def output_dim(spec: BackboneSpec, image_size: int | None = None) -> int:
    """Feature dimension at an image size (only ``pixels`` depends on it)."""
    if spec.arch is None:
        size = image_size or spec.image_size
        return size * size
    return spec.dim

