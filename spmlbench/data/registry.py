"""Dataset registry: name -> adapter (manifest, default backbone, raw files, format function).

An adapter's ``format`` turns raw data (extracted archives or the user's folder) into the two
formatted files of docs/protocol.md, section 1: official train (image list + clean matrix) and
official val, our test. Everything after that (sampling, split, storage) is shared.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spmlbench.errors import DataError
from spmlbench.paths import dataset_dir
from spmlbench.registry import Registry

IMAGES_DIR = "images"
"""Name of the image root inside ``$SPMLBENCH_HOME/<ds>/`` (a folder or a symlink to one)."""

IMAGES_POINTER = "images.path"
"""Fallback when symlinks are unavailable: a text file holding the absolute image root."""


@dataclasses.dataclass(frozen=True)
class FormatInput:
    """What a format function gets.

    ``roots``: folders to search for raw files (extracted archives, the user's ``--from``
    folder, downloaded plain files). ``work``: an empty scratch folder inside the data home that
    the format function may fill (digits writes its PNGs there). ``manifest``: the dataset's
    manifest or None. ``options``: adapter-specific switches.
    """

    roots: tuple[Path, ...]
    work: Path
    manifest: Any = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def find(self, *parts: str, kind: str = "file", hint: str = "") -> Path:
        """Find ``parts`` (e.g. ``"ImageSets", "Main"``) anywhere under the roots; the shallowest match wins.

        Raises DataError naming what is missing and where it was searched.
        """
        found = self.find_all(*parts, kind=kind)
        if not found:
            where = ", ".join(str(r) for r in self.roots) or "(nothing)"
            fix = hint or "point --from at the extracted dataset folder or its archive"
            raise DataError(f"{'/'.join(parts)}: not found under {where}; {fix}")
        return found[0]

    def find_all(self, *parts: str, kind: str = "file") -> list[Path]:
        """Every path under the roots ending with ``parts``, shallowest first (``kind``: file or dir)."""
        want = tuple(parts)
        hits: list[tuple[int, str, Path]] = []
        for root in self.roots:
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                names = filenames if kind == "file" else dirnames
                if want[-1] not in names:
                    continue
                path = Path(dirpath, want[-1])
                if path.parts[-len(want):] == want:
                    hits.append((len(path.relative_to(root).parts), str(path), path))
        return [path for _, _, path in sorted(set(hits))]


@dataclasses.dataclass
class Formatted:
    """The two formatted files of one dataset, in protocol row order.

    ``image_root``: the folder the image paths are relative to (becomes ``<ds>/images``).
    ``read_files``: raw files the formatter read, by a stable name (their sha256 goes into the
    metadata ``sources``). ``notes``: extra metadata (e.g. NUS-WIDE's label-less row counts).
    """

    class_names: list[str]
    train_images: list[str]
    y_train: np.ndarray
    test_images: list[str]
    y_test: np.ndarray
    image_root: Path
    read_files: dict[str, Path] = dataclasses.field(default_factory=dict)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: dict[str, Any] = dataclasses.field(default_factory=dict)

    def check(self, dataset: str) -> None:
        """Raise DataError when shapes or values are inconsistent (a formatter bug or corrupt input)."""
        c = len(self.class_names)
        for name, imgs, y in (("train", self.train_images, self.y_train), ("test", self.test_images, self.y_test)):
            if y.ndim != 2 or y.shape != (len(imgs), c):
                raise DataError(
                    f"{dataset} {name}: label matrix shape {y.shape} does not match "
                    f"{len(imgs)} images x {c} classes; check the raw files"
                )
            if y.size and not np.isin(y, (0, 1)).all():
                raise DataError(f"{dataset} {name}: labels must be 0/1; check the raw files")


FormatFn = Callable[[FormatInput], Formatted]


@dataclasses.dataclass(frozen=True)
class DatasetAdapter:
    """How one dataset is obtained and formatted.

    ``manifest``: name of ``spmlbench/data_manifests/<name>.toml`` (None: built offline, no download).
    ``raw_files``: manifest files the formatter needs; each is downloaded unless ``--from``
    provides it (an archive is verified and extracted; a folder may hold it already extracted).
    ``user_supplied``: what ``--from`` must point to when part of the data is never downloaded
    (NUS-WIDE's ``Flickr/``), else None.
    """

    name: str
    title: str
    manifest: str | None
    default_backbone: str
    format: FormatFn
    raw_files: tuple[str, ...] = ()
    user_supplied: str | None = None


DATASETS: Registry[DatasetAdapter] = Registry("dataset")


def get_adapter(name: str) -> DatasetAdapter:
    """Return the adapter of a registered dataset (ConfigError listing the known names otherwise)."""
    _ensure_loaded()
    return DATASETS.get(name)


LISTING_ORDER = ("digits", "voc", "coco", "nuswide", "cub")


def dataset_names() -> list[str]:
    """Names of every registered dataset: the offline demo first, then the benchmarks, then any others."""
    _ensure_loaded()
    rank = {name: i for i, name in enumerate(LISTING_ORDER)}
    return sorted(DATASETS.names(), key=lambda n: (rank.get(n, len(rank)), n))


def image_root(dataset: str, home: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder a prepared dataset's ``image`` paths are relative to.

    That is ``<ds>/images`` (a folder, or a symlink to the extracted tree or the user's folder),
    or the path written in ``<ds>/images.path`` (absolute, or relative to ``<ds>``) where symlinks
    are unavailable.
    """
    ds = dataset_dir(dataset, home)
    pointer = ds / IMAGES_POINTER
    if not (ds / IMAGES_DIR).exists() and pointer.exists():
        return ds / pointer.read_text(encoding="utf-8").strip()  # relative, or absolute (wins in the join)
    return ds / IMAGES_DIR


def _ensure_loaded() -> None:
    """Import every module of :mod:`spmlbench.data.datasets` (each registers its adapter on import)."""
    load_datasets()


def load_datasets() -> None:
    """Import the dataset modules (``spmlbench/data/datasets/<name>.py``); each registers itself."""
    package = "spmlbench.data.datasets"
    for mod in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"{package}.{mod.name}")
