"""Where data and results live: ``$SPMLBENCH_HOME`` (default from platformdirs) and ``results/``."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from spmlbench.errors import ConfigError

ENV_HOME = "SPMLBENCH_HOME"


def check_name(kind: str, name: str) -> str:
    """``name`` when it is a plain file name (a dataset or backbone), else ConfigError: no path
    separators, no leading dot (``..``, hidden staging folders), not empty."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or name != name.strip():
        raise ConfigError(f"{kind} {name!r}: not a plain name (no '/', '\\', leading '.' or spaces); "
                          f"give a {kind} name, not a path")
    return name


def data_home(home: str | os.PathLike[str] | None = None) -> Path:
    """Return the data home: ``home`` if given, else ``$SPMLBENCH_HOME``, else the platform data dir."""
    if home is not None:
        return Path(home).expanduser()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("spmlbench", appauthor=False))


def dataset_dir(dataset: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Return ``<data home>/<dataset>``: labels.parquet, images/ and features/ of one dataset
    (ConfigError for a name that is not a plain name, e.g. one escaping the data home)."""
    return data_home(home) / check_name("dataset", dataset)


def labels_path(dataset: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of a dataset's ``labels.parquet``."""
    return dataset_dir(dataset, home) / "labels.parquet"


def features_path(dataset: str, backbone: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Return the path of a dataset's feature cache for one backbone (plain names only)."""
    return dataset_dir(dataset, home) / "features" / f"{check_name('backbone', backbone)}.parquet"


def default_results_dir() -> Path:
    """Return the default results folder (``./results``)."""
    return Path("results")
