"""``labels.parquet``: one row per image in protocol order, with provenance in the schema metadata.

Columns: ``image`` (path relative to the dataset's image root), ``split`` (train/val/test),
``labels`` (list of C int8, clean), ``observed`` (list of C int8: the single positive for
train/val rows, the clean labels for test rows). Metadata (JSON under the key ``spmlbench``):
protocol parameters, source checksums, class names, counts, expected positives per image.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spmlbench.atomic import atomic_path
from spmlbench.data.label_checks import SPLITS, check_table, empty_class_warning, empty_test_classes, parse_metadata
from spmlbench.errors import DataError
from spmlbench.paths import labels_path

META_KEY = b"spmlbench"


def write_labels(
    path: str | os.PathLike[str],
    images: list[str],
    splits: list[str],
    labels: np.ndarray,
    observed: np.ndarray,
    metadata: dict[str, Any],
) -> Path:
    """Write ``labels.parquet`` atomically; ``labels``/``observed`` are (N, C) 0/1 arrays."""
    labels = np.ascontiguousarray(labels, dtype=np.int8)
    observed = np.ascontiguousarray(observed, dtype=np.int8)
    n, c = labels.shape
    if observed.shape != (n, c) or len(images) != n or len(splits) != n:
        raise ValueError("images, splits, labels and observed must have the same number of rows")
    bad = set(splits) - set(SPLITS)
    if bad:
        raise ValueError(f"unknown split names {sorted(bad)}")

    def fixed_list(mat: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(mat.reshape(-1), type=pa.int8()), c)

    table = pa.table(
        {
            "image": pa.array(images, type=pa.string()),
            "split": pa.array(splits, type=pa.string()),
            "labels": fixed_list(labels),
            "observed": fixed_list(observed),
        }
    )
    meta = dict(metadata)
    meta.setdefault("num_classes", c)
    meta.setdefault("counts", {s: int(sum(1 for x in splits if x == s)) for s in SPLITS})
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


def read_labels(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and check a ``labels.parquet`` file (:mod:`~spmlbench.data.label_checks`); the metadata
    dict is in ``df.attrs["spmlbench"]``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: labels file not found; run 'spmlbench prepare <dataset>' first")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({exc}); re-run 'spmlbench prepare'") from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise DataError(f"{path}: no spmlbench metadata; re-run 'spmlbench prepare'")
    meta = parse_metadata(path, raw)
    check_table(path, table, meta)
    df = table.to_pandas()
    df.attrs["spmlbench"] = meta
    return df


def load_labels(dataset: str, home: str | os.PathLike[str] | None = None) -> pd.DataFrame:
    """Return a prepared dataset's labels as a DataFrame (metadata in ``df.attrs["spmlbench"]``)."""
    path = labels_path(dataset, home)
    if not path.exists():
        raise DataError(
            f"{path}: dataset {dataset!r} is not prepared; run 'spmlbench prepare {dataset}'"
        )
    return read_labels(path)


def test_class_warning(dataset: str, home: str | os.PathLike[str] | None = None) -> str | None:
    """The warning for ``dataset``'s classes without a test positive (None when every class has one, or the
    dataset is not prepared): :func:`~spmlbench.data.label_checks.empty_class_warning`."""
    path = labels_path(dataset, home)
    if not path.exists():
        return None
    df = read_labels(path)
    classes = empty_test_classes(label_matrix(df, "labels"), df["split"].to_numpy())
    return empty_class_warning(path, classes, list(df.attrs["spmlbench"].get("class_names", [])))


def label_matrix(df: pd.DataFrame, column: str = "labels", split: str | None = None) -> np.ndarray:
    """Stack a list column (``labels`` or ``observed``) into an (N, C) int8 array, optionally one split."""
    if split is not None:
        df = df[df["split"] == split]
    values = df[column].to_numpy()
    if len(values) == 0:
        c = int(df.attrs.get("spmlbench", {}).get("num_classes", 0))
        return np.zeros((0, c), dtype=np.int8)
    return np.stack(values).astype(np.int8, copy=False)


def check_protocol(jobs: Any, meta: dict[str, Any]) -> None:
    """DataError when a job's label_seed/split_seed differs from the prepared dataset's (``meta``: the
    labels' metadata); ``jobs``: anything with ``dataset``, ``label_seed``, ``split_seed`` (None: not asked)."""
    proto = meta.get("protocol", {}) or {}
    for j in jobs:
        for name in ("label_seed", "split_seed"):
            have, want = proto.get(name), getattr(j, name, None)
            if have is not None and want is not None and int(have) != int(want):
                raise DataError(f"{j.dataset}: prepared with {name}={have} but the job asks for {want}; "
                                f"re-run 'spmlbench prepare {j.dataset}' with that seed or drop the override")
