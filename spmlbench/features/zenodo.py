"""Import the published pre-extracted ResNet-50 features (Zenodo record 10162606, Cole et al. 2021).

The record holds ``{train,val}_features_imagenet_resnet50.npy`` per dataset: official-train rows
then official-val rows, which is the row order of ``labels.parquet`` (train/val rows, then test).
They are stored as the backbone ``resnet50-zenodo`` (``<ds>/features/resnet50-zenodo.parquet``),
beside our own ``resnet50`` extraction, so the two can be compared. Shapes are checked against
``labels.parquet``; when the record's ``formatted_{train,val}_images.npy`` are present too, every
row's image is checked against the labels' image column (paths may differ by a leading folder).
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

import numpy as np

from spmlbench.data.acquire import sha256_file
from spmlbench.errors import DataError
from spmlbench.features.store import write_features
from spmlbench.paths import features_path

ZENODO_BACKBONE = "resnet50-zenodo"
ZENODO_RECORD = 10162606
ZENODO_DIM = 2048
FEATURE_FILE = "{phase}_features_imagenet_resnet50.npy"
IMAGES_FILE = "formatted_{phase}_images.npy"
# Folder names the reference code uses per dataset (its data/<name>/ layout).
REFERENCE_FOLDERS = {"voc": ("pascal", "voc"), "coco": ("coco",), "nuswide": ("nuswide",), "cub": ("cub",)}


def _find_folder(dataset: str, source: Path) -> Path:
    """``source`` itself, or ``source/<dataset folder>``, whichever holds the train feature file."""
    name = FEATURE_FILE.format(phase="train")
    for folder in (source, *(source / d for d in REFERENCE_FOLDERS.get(dataset, (dataset,)))):
        if (folder / name).is_file():
            return folder
    raise DataError(
        f"{source}: no {name} for {dataset}; download the features of Zenodo record {ZENODO_RECORD} "
        f"and point at the folder holding {FEATURE_FILE.format(phase='{train,val}')}"
    )


def _load_npy(path: Path) -> np.ndarray:
    """Memory-map a plain (non-pickled) .npy file; anything else is a DataError."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable plain .npy array ({exc}); download it again") from None


def _norm(path: Any) -> str:
    """A path from either list as a ``/``-separated string without a leading ``./``."""
    text = path.decode("utf-8") if isinstance(path, bytes) else str(path)
    text = text.replace("\\", "/")
    return text[2:] if text.startswith("./") else text


def same_image(a: str, b: str) -> bool:
    """True when two relative image paths name the same file (equal, or one ends with ``/`` + the other)."""
    a, b = _norm(a), _norm(b)
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def _check_images(path: Path, listed: np.ndarray, expected: list[str]) -> None:
    """Raise DataError at the first row whose image differs from ``labels.parquet``."""
    if len(listed) != len(expected):
        raise DataError(f"{path}: lists {len(listed)} images, labels.parquet has {len(expected)} for this split; "
                        "re-run 'spmlbench prepare' or use the matching record files")
    for i, (a, b) in enumerate(zip(listed, expected)):
        if not same_image(a, b):
            raise DataError(f"{path}: row {i} is {_norm(a)!r} but labels.parquet has {b!r}; "
                            "the features are not in the prepared row order, do not use them")


def import_zenodo_features(dataset: str, source: str | os.PathLike[str], *, home: str | os.PathLike[str] | None = None) -> Path:
    """Convert the record's ResNet-50 features for ``dataset`` into ``<ds>/features/resnet50-zenodo.parquet``.

    Checks: both arrays are (rows, 2048), the row counts equal labels.parquet's train+val and
    test counts, labels.parquet is in protocol order, and (when the image lists are present)
    every row's image matches. Returns the written path.
    """
    from spmlbench.data.store import load_labels

    folder = _find_folder(dataset, Path(source).expanduser())
    labels = load_labels(dataset, home)
    splits = labels["split"].to_numpy()
    images = labels["image"].tolist()
    n_train = int(np.isin(splits, ("train", "val")).sum())
    if not (np.isin(splits[:n_train], ("train", "val")).all() and (splits[n_train:] == "test").all()):
        raise DataError(f"{dataset} labels.parquet: rows are not official-train then test; re-run 'spmlbench prepare {dataset}'")
    parts, files, alignment = [], {}, []
    for phase, rows in (("train", slice(0, n_train)), ("val", slice(n_train, len(images)))):
        fpath = folder / FEATURE_FILE.format(phase=phase)
        arr = _load_npy(fpath)
        want = rows.stop - rows.start
        if arr.ndim != 2 or arr.shape != (want, ZENODO_DIM):
            raise DataError(f"{fpath}: shape {arr.shape}, expected ({want}, {ZENODO_DIM}) from labels.parquet; "
                            f"these are not the {dataset} features of record {ZENODO_RECORD}")
        files[fpath.name] = sha256_file(fpath)
        ipath = folder / IMAGES_FILE.format(phase=phase)
        if ipath.is_file():
            _check_images(ipath, _load_npy(ipath), images[rows])
            files[ipath.name] = sha256_file(ipath)
            alignment.append(f"{phase}: every image checked")
        else:
            alignment.append(f"{phase}: row count only ({ipath.name} absent)")
        parts.append(arr)
    features = np.empty((len(images), ZENODO_DIM), dtype=np.float32)
    features[:n_train] = parts[0]  # one conversion pass from the memory-mapped files
    features[n_train:] = parts[1]
    meta = {
        "dataset": dataset,
        "backbone": ZENODO_BACKBONE,
        "source": f"zenodo record {ZENODO_RECORD} (Cole et al., CVPR 2021)",
        "weights": "ResNet50_Weights.IMAGENET1K_V1 (as published; extraction script not released)",
        "transform": "unknown (the reference never released its extraction script)",
        "image_size": None,
        "source_dtype": str(parts[0].dtype),
        "source_files": files,
        "alignment": alignment,
        "device": "unknown",
        "precision": "unknown",
    }
    meta["date"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return write_features(features_path(dataset, ZENODO_BACKBONE, home), images, features, meta)
