"""What ``spmlbench prepare --features MODE`` does once the labels are written."""

from __future__ import annotations

import os
from pathlib import Path

from spmlbench.errors import ConfigError
from spmlbench.paths import data_home
from spmlbench.progress import Sink

FEATURE_MODES = ("default", "none", "zenodo", "extract")


def run_features(dataset: str, mode: str, *, home: str | os.PathLike[str] | None = None, source: Path | None = None,
                 progress: Sink | None = None) -> Path | None:
    """After labels are written: extract (``default``/``extract``), import Zenodo (``zenodo``) or skip (``none``)."""
    if mode not in FEATURE_MODES:
        raise ConfigError(f"--features {mode!r}: unknown mode; choose one of {', '.join(FEATURE_MODES)}")
    if mode == "none":
        return None
    if mode == "zenodo":
        from spmlbench.features.zenodo import import_zenodo_features

        folder = source if source is not None and Path(source).is_dir() else data_home(home) / "downloads" / dataset
        return import_zenodo_features(dataset, Path(folder), home=home)
    from spmlbench.features.extract import extract_features

    return extract_features(dataset, None, home=home, progress=progress)
