"""Where data and results live: ``$SPMLBENCH_HOME`` (default from platformdirs) and ``results/``."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_HOME = "SPMLBENCH_HOME"


def data_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Return the data home: ``home`` if given, else ``$SPMLBENCH_HOME``, else the platform data dir."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("spmlbench", appauthor=False))


def dataset_dir(dataset: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Return ``<data home>/<dataset>``: labels.parquet, images/ and features/ of one dataset."""
    return data_home(home) / dataset


def labels_path(dataset: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of a dataset's ``labels.parquet``."""
    return dataset_dir(dataset, home) / "labels.parquet"


def features_path(dataset: str, backbone: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of a dataset's feature cache for one backbone."""
    return dataset_dir(dataset, home) / "features" / f"{backbone}.parquet"


def default_results_dir() -> Path:
    """Return the default results folder (``./results``)."""
    return Path("results")
