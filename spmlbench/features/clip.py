"""CLIP models for the pseudo-label stage, through ``open-clip-torch`` (the ``clip`` extra).

The OpenAI weights are loaded under the ``-quickgelu`` model names (open_clip 3.x builds GELU for the plain
names: the wrong activation for those weights). Extra architectures (a tiny random-weight CLIP for offline
runs and tests) are JSON configs in ``spmlbench/data_manifests/clip_models/``. Missing weights offline give a one-line
error naming where open_clip looks for them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from spmlbench.errors import ConfigError
from spmlbench.paths import shipped

CONFIGS_DIR = shipped("clip_models")
INSTALL_HINT = "the CLIP pseudo-label stage needs the clip extra; run pip install -e '.[clip]'"


@dataclasses.dataclass
class Clip:
    """A frozen CLIP model: ``encode_image`` / ``encode_text``, its tokenizer and its input size."""

    model: Any
    tokenizer: Any
    image_size: int
    name: str
    pretrained: str


def open_clip_module() -> Any:
    """The ``open_clip`` module with spmlbench's extra configs registered (ConfigError when not installed)."""
    try:
        import open_clip
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    for path in sorted(CONFIGS_DIR.glob("*.json")):
        if path.stem not in open_clip.list_models():
            open_clip.add_model_config(path)
    return open_clip


def load_clip(name: str, pretrained: str, device: torch.device, seed: int = 0) -> Clip:
    """CLIP ``name`` with weights ``pretrained`` (an open_clip tag such as ``openai``, or ``none`` for a
    random init drawn under ``seed``), in eval mode on ``device``."""
    oc = open_clip_module()
    if name not in oc.list_models():
        raise ConfigError(f"--clip-model {name!r}: unknown to open_clip; use e.g. ViT-B-16-quickgelu, "
                          "ViT-L-14-336-quickgelu or spml-tiny-clip")
    if pretrained == "none":
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # open_clip warns on the root logger that no weights were loaded
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = oc.create_model(name, pretrained=None)
        finally:
            root.setLevel(level)
    else:
        if pretrained not in oc.list_pretrained_tags_by_model(name):
            raise ConfigError(f"--weights {pretrained!r}: no such weights for {name}; choose one of "
                              f"{', '.join(oc.list_pretrained_tags_by_model(name)) or 'none'}")
        try:
            model = oc.create_model(name, pretrained=pretrained)
        except Exception as exc:  # noqa: BLE001 - offline: a download error of some kind
            cfg = oc.get_pretrained_cfg(name, pretrained)
            where = f"hf.co/{cfg['hf_hub']}" if cfg.get("hf_hub") else cfg.get("url", "?")
            raise ConfigError(
                f"{name}/{pretrained}: CLIP weights not available ({type(exc).__name__}); on a machine with network "
                f"run python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{pretrained}')\" "
                f"(downloads {where} into the Hugging Face cache, ~/.cache/huggingface; set HF_HOME to move it) "
                "and copy that cache here, or pass --weights none for random weights") from None
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return Clip(model.to(device).eval(), oc.get_tokenizer(name), size, name, pretrained)


@torch.no_grad()
def text_embeddings(clip: Clip, class_names: list[str], template: str, device: torch.device) -> torch.Tensor:
    """L2-normalised text embeddings ``(C, d)`` of ``template.format(name)`` per class (``_`` read as space)."""
    prompts = [template.format(n.replace("_", " ")) for n in class_names]
    t = clip.model.encode_text(clip.tokenizer(prompts).to(device)).float()
    return torch.nn.functional.normalize(t, dim=-1)


@torch.no_grad()
def image_embeddings(clip: Clip, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised image embeddings ``(B, d)`` of float images ``(B, 3, S, S)`` already normalised."""
    return torch.nn.functional.normalize(clip.model.encode_image(images).float(), dim=-1)
