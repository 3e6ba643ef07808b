"""Backbone features: registry (``backbones``), extraction (``extract``), Parquet cache (``store``), Zenodo import.

Names are imported lazily so that reading a cache does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "extract_features": "spmlbench.features.extract",
    "load_features": "spmlbench.features.store",
    "read_features": "spmlbench.features.store",
    "write_features": "spmlbench.features.store",
    "import_zenodo_features": "spmlbench.features.zenodo",
    "get_backbone": "spmlbench.features.backbones",
    "BACKBONES": "spmlbench.features.backbones",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spmlbench.features' has no attribute {name!r}")
