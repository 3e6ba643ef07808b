"""Where data, results and caches live: ``$SPMLBENCH_HOME`` (default from platformdirs), ``results/`` and
``$SPMLBENCH_CACHE`` (default: the platform cache dir, ``$XDG_CACHE_HOME/spmlbench`` on Linux); and the data
files the package ships (``spmlbench/data_manifests/``: dataset manifests, recipes, loss defaults, citations,
experiments, published results), found the same way in a checkout and in an installed wheel."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from spmlbench.errors import ConfigError

ENV_HOME = "SPMLBENCH_HOME"
ENV_CACHE = "SPMLBENCH_CACHE"


_SHIPPED = Path(__file__).resolve().parent / "data_manifests"


def shipped(*parts: str) -> Path:
    """A file or folder of the package's data, ``spmlbench/data_manifests/<parts>`` (package data: it is in the
    wheel, so ``pip install .`` and ``pip install -e .`` find it alike)."""
    return _SHIPPED.joinpath(*parts)


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


def cache_dir() -> Path:
    """Return the folder of rebuildable caches: ``$SPMLBENCH_CACHE``, else the platform cache dir."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_cache_dir("spmlbench", appauthor=False))


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
