"""Feature cache ``<ds>/features/<backbone>.parquet``: rows aligned with ``labels.parquet``.

Columns ``image`` (string) and ``features`` (fixed-size list<float32>[D]), zstd, the float
column byte-stream-split and written as one row group so that loading decodes straight into one
buffer that numpy views as (N, D) without another copy. Schema metadata (JSON under the key
``spmlbench``): backbone, weights, transform, image size, dtype, torch/torchvision versions,
device, date, rows, dim and ``sha256`` of the raw float32 C-order feature bytes, verified on load.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from spmlbench.atomic import atomic_path
from spmlbench.errors import DataError
from spmlbench.paths import features_path

META_KEY = b"spmlbench"


def feature_sha256(features: np.ndarray) -> str:
    """sha256 of the raw float32 C-order bytes of ``features`` (no copy when already contiguous float32)."""
    arr = np.ascontiguousarray(features, dtype=np.float32)
    return hashlib.sha256(arr.reshape(-1).view(np.uint8)).hexdigest()


def write_features(
    path: str | os.PathLike[str],
    images: list[str],
    features: np.ndarray,
    metadata: dict[str, Any],
) -> Path:
    """Write a feature cache atomically; ``features`` is (N, D), stored as float32.

    ``rows``, ``dim``, ``dtype`` and ``sha256`` are filled in from the array; the rest of
    ``metadata`` (backbone, weights, transform, versions, ...) is stored as given.
    """
    feats = np.ascontiguousarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] != len(images):
        raise ValueError(f"features shape {feats.shape} does not match {len(images)} images")
    n, d = feats.shape
    column = pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), type=pa.float32()), d)
    table = pa.table({"image": pa.array(list(images), type=pa.string()), "features": column})
    meta = dict(metadata)
    meta.update(rows=n, dim=d, dtype="float32", sha256=feature_sha256(feats))
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, sort_keys=True).encode()})
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            row_group_size=max(n, 1),
            use_dictionary=["image"],
            use_byte_stream_split=["features.list.element"],
        )
    return path


def read_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The schema metadata of a feature cache (reads the footer only)."""
    path = Path(path)
    try:
        schema = pq.read_schema(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: not a readable Parquet file ({type(exc).__name__}); {_rebuild_hint(path)}") from None
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise DataError(f"{path}: no spmlbench metadata; {_rebuild_hint(path)}")
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict):  # a traceback, before, and 'features' did not rebuild it
        raise DataError(f"{path}: its spmlbench metadata is not a JSON object (corrupt); {_rebuild_hint(path)}")
    return meta


def _as_matrix(column: pa.ChunkedArray, n: int, d: int) -> np.ndarray:
    """(N, D) float32 view of a fixed-size list column: no copy when it decoded as one chunk."""
    if n == 0:
        return np.empty((0, d), dtype=np.float32)
    if column.num_chunks == 1:
        flat = column.chunk(0).flatten()  # honours the slice offset
        if flat.null_count == 0:
            buf = flat.buffers()[1]
            arr = np.frombuffer(buf, dtype=np.float32, count=len(flat), offset=flat.offset * 4)
            return arr.reshape(n, d)
    out = np.empty((n, d), dtype=np.float32)  # several row groups (not written by us): one copy
    row = 0
    for chunk in column.chunks:
        values = chunk.flatten().to_numpy(zero_copy_only=False)
        out[row : row + len(chunk)] = values.reshape(len(chunk), d)
        row += len(chunk)
    return out


def read_features(path: str | os.PathLike[str], *, verify: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Return ``(features (N, D) float32, metadata)``; the bytes are checked against the stored sha256."""
    path = Path(path)
    meta = read_metadata(path)
    try:
        table = pq.read_table(path, columns=["features"])
    except Exception as exc:
        raise DataError(f"{path}: cannot decode the features ({type(exc).__name__}); {_rebuild_hint(path)}") from None
    column = table.column("features")
    if not pa.types.is_fixed_size_list(column.type) or column.type.value_type != pa.float32():
        raise DataError(f"{path}: column 'features' is {column.type}, not fixed_size_list<float32>; {_rebuild_hint(path)}")
    n, d = table.num_rows, column.type.list_size
    if (meta.get("rows"), meta.get("dim")) != (n, d):
        raise DataError(
            f"{path}: holds {n} x {d} features but its metadata says {meta.get('rows')} x {meta.get('dim')}; "
            f"{_rebuild_hint(path)}"
        )
    feats = _as_matrix(column, n, d)
    if verify and feature_sha256(feats) != meta.get("sha256"):
        raise DataError(f"{path}: feature bytes do not match the sha256 in its metadata (corrupt); {_rebuild_hint(path)}")
    return feats, meta


def read_images(path: str | os.PathLike[str]) -> list[str]:
    """The ``image`` column of a feature cache."""
    try:
        return pq.read_table(path, columns=["image"]).column("image").to_pylist()
    except Exception as exc:
        raise DataError(f"{path}: cannot read the image column ({type(exc).__name__}); {_rebuild_hint(Path(path))}") from None


def alignment_problem(cache_images: list[str], label_images: list[str]) -> str | None:
    """None when the cache rows are the labels rows in order, else a short description of the mismatch."""
    if len(cache_images) != len(label_images):
        return f"has {len(cache_images)} rows but labels.parquet has {len(label_images)}"
    for i, (a, b) in enumerate(zip(cache_images, label_images)):
        if a != b:
            return f"row {i} is {a!r} but labels.parquet row {i} is {b!r}"
    return None


def check_finite(path: str | os.PathLike[str], feats: np.ndarray, block: int = 4096) -> None:
    """DataError naming the cache ``path`` when ``feats`` holds NaN or infinite values (checked in
    row blocks: little extra memory); a trainer would otherwise only report non-finite logits."""
    bad = sum(int(feats[i:i + block].size - np.isfinite(feats[i:i + block]).sum()) for i in range(0, len(feats), block))
    if bad:
        what = "pseudo-label scores" if Path(path).parent.name == "pseudo" else "feature values"
        raise DataError(f"{path}: holds {bad} NaN or infinite {what}; {_rebuild_hint(Path(path))}")


def _rebuild_hint(path: Path) -> str:
    """The fix for a bad cache file: rebuild it with the command that makes it (features, pseudo-labels)."""
    backbone = path.stem
    dataset = path.parent.parent.name if path.parent.name in ("features", "pseudo") else "<dataset>"
    if path.parent.name == "pseudo":  # a pseudo-label cache: its own command (was: features --backbone damp)
        return f"rebuild it with 'spmlbench pseudo-labels {dataset} --source {path.stem} --force'"
    if backbone.endswith("-zenodo"):
        return f"re-import it with 'spmlbench features {dataset} --zenodo <folder with the .npy files>'"
    return f"rebuild it with 'spmlbench features {dataset} --backbone {backbone} --force'"


def load_features(dataset: str, backbone: str, *, home: str | os.PathLike[str] | None = None) -> np.ndarray:
    """(N, D) float32 features of a dataset, aligned with ``labels.parquet`` rows and hash-checked.

    A missing cache, a corrupt one, one built for another backbone or dataset (a file copied or
    renamed into place), or one whose images are not the labels' rows in order raises DataError
    with the command that fixes it. (NaN values are stored bit for bit; training refuses them:
    :func:`check_finite`.)
    """
    from spmlbench.data.store import load_labels

    path = features_path(dataset, backbone, home)
    if not path.exists():
        raise DataError(
            f"{path}: no {backbone} features for {dataset}; run 'spmlbench features {dataset} --backbone {backbone}'"
        )
    feats, meta = read_features(path)
    for key, want in (("backbone", backbone), ("dataset", dataset)):
        have = meta.get(key)
        if have is not None and have != want:
            raise DataError(f"{path}: built for {key} {have!r}, not {want!r} (a file copied or renamed into place); "
                            f"{_rebuild_hint(path)}")
    problem = alignment_problem(read_images(path), load_labels(dataset, home)["image"].tolist())
    if problem is not None:
        raise DataError(
            f"{path}: {problem} (stale cache); run 'spmlbench features {dataset} --backbone {backbone}' to rebuild it"
        )
    return feats
