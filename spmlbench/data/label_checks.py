"""Checks on a ``labels.parquet`` table as it is loaded: a bad file fails with one line, never trains.

What is checked (each failure names the file, the problem and the fix):

- the metadata is a JSON object; the columns ``image``, ``split``, ``labels``, ``observed`` exist;
- every image is listed once;
- split names are ``train``/``val``/``test`` (training also needs rows in each: :func:`require_splits`);
- ``labels`` and ``observed`` are lists without nulls, every list as long as the metadata's
  ``num_classes``, every value 0 or 1 (so the CPU and the generic AP paths agree);
- train and val rows: ``observed`` holds at most one positive, exactly one when the clean row has
  any, and it is one of the clean positives. Rows without any clean positive keep no observed
  positive: the protocol keeps them (NUS-WIDE's about 22% unlabelled rows, CUB images with no
  attribute; docs/protocol.md, section 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from spmlbench.errors import DataError

SPLITS = ("train", "val", "test")
COLUMNS = ("image", "split", "labels", "observed")
FIX = "re-run 'spmlbench prepare <dataset>'"


def parse_metadata(path: Path, raw: bytes) -> dict[str, Any]:
    """The JSON metadata dict of a labels file (DataError when it is not a JSON object)."""
    try:
        meta = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise DataError(f"{path}: its spmlbench metadata is not valid JSON; {FIX}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: its spmlbench metadata is {type(meta).__name__}, not a JSON object; {FIX}")
    return meta


def check_table(path: Path, table: pa.Table, meta: dict[str, Any]) -> None:
    """DataError naming ``path`` unless ``table`` is a well-formed labels table (see the module doc)."""
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; {FIX}")
    splits = table.column("split")
    if splits.null_count:
        raise DataError(f"{path}: {splits.null_count} rows have no split name; {FIX}")
    names = np.asarray(splits.to_numpy(zero_copy_only=False), dtype=object)
    unknown = sorted(set(names.tolist()) - set(SPLITS))
    if unknown:
        raise DataError(f"{path}: unknown split name(s) {', '.join(map(repr, unknown[:5]))} (known: "
                        f"{', '.join(SPLITS)}); {FIX}")
    _check_unique_images(path, table.column("image"))
    classes = meta.get("num_classes")
    labels = _matrix(path, table, "labels", classes)
    observed = _matrix(path, table, "observed", labels.shape[1])
    _check_single_positive(path, labels, observed, np.isin(names, ("train", "val")))


def _check_unique_images(path: Path, images: pa.ChunkedArray) -> None:
    """DataError naming the first image listed twice (blamed on the feature cache, before, then trained)."""
    names = images.to_pylist()
    seen: dict[Any, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(f"{path}: row {i} repeats image {name!r} of row {seen[name]} (each image once); {FIX}")
        seen[name] = i


def empty_test_classes(labels: np.ndarray, splits: Any) -> list[int]:
    """The classes with no positive among the test rows of ``labels`` (N, C)."""
    test = np.asarray(splits, dtype=object) == "test"
    return [int(c) for c in np.flatnonzero(labels[test].sum(axis=0) == 0)]


def zero_ap_classes(test_aps: Any) -> list[int]:
    """The classes whose test AP is 0 in every one of ``test_aps`` (per-class AP vectors of finished records of
    one dataset): a class with a test positive always has AP > 0, so these have none (how ``report``, which
    reads records only, finds them)."""
    rows = [np.asarray(a, dtype=float) for a in test_aps if a is not None and len(a)]
    if not rows or len({len(r) for r in rows}) != 1:
        return []
    return [int(c) for c in np.flatnonzero((np.stack(rows) == 0).all(axis=0))]


def empty_class_warning(path: Path | str, classes: list[int], names: list[str]) -> str | None:
    """One warning line for classes without a test positive (None when there are none), stating the AP
    policy: such a class counts as AP 0 in the test mAP (spmlbench.train.evaluate), lowering every loss's."""
    if not classes:
        return None
    shown = ", ".join(f"{c} ({names[c]!r})" if c < len(names) else str(c) for c in classes[:5])
    more = f" and {len(classes) - 5} more" if len(classes) > 5 else ""
    return (f"warning: {path}: class{'es' if len(classes) > 1 else ''} {shown}{more} ha{'ve' if len(classes) > 1 else 's'} "
            "no positive in the test split; AP policy: such a class counts as AP 0 in the test mAP (lowering every "
            "loss's equally); re-prepare the dataset if that is not intended")


def _matrix(path: Path, table: pa.Table, column: str, classes: Any) -> np.ndarray:
    """(N, C) int8 matrix of a list column, checked: no nulls, C values per row, each 0 or 1."""
    col = table.column(column).combine_chunks()
    if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type)):
        raise DataError(f"{path}: column {column!r} is {col.type}, not a list of 0/1 values; {FIX}")
    if col.null_count:
        raise DataError(f"{path}: column {column!r} has {col.null_count} null rows; {FIX}")
    lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False))
    want = int(classes) if isinstance(classes, int) and not isinstance(classes, bool) else int(lengths[0]) if len(lengths) else 0
    bad = np.flatnonzero(lengths != want)
    if len(bad):
        raise DataError(f"{path}: column {column!r} row {int(bad[0])} has {int(lengths[bad[0]])} values but the "
                        f"dataset has {want} classes (metadata num_classes); {FIX}")
    flat = col.flatten()
    if flat.null_count:
        raise DataError(f"{path}: column {column!r} holds {flat.null_count} null values; {FIX}")
    values = np.asarray(flat.to_numpy(zero_copy_only=False))
    if not np.issubdtype(values.dtype, np.number) and values.dtype != np.bool_:
        raise DataError(f"{path}: column {column!r} holds {values.dtype} values, not 0/1; {FIX}")
    odd = ~((values == 0) | (values == 1))
    if odd.any():
        first = values[np.flatnonzero(odd)[0]]
        raise DataError(f"{path}: column {column!r} holds {int(odd.sum())} values other than 0/1 (e.g. {first}); {FIX}")
    return values.astype(np.int8).reshape(len(lengths), want)


def _check_single_positive(path: Path, labels: np.ndarray, observed: np.ndarray, rows: np.ndarray) -> None:
    """Train/val rows: observed = one of the clean positives, or nothing when the clean row has none."""
    obs, clean = observed[rows], labels[rows]
    count = obs.sum(axis=1, dtype=np.int64)
    want = (clean.sum(axis=1, dtype=np.int64) > 0).astype(np.int64)
    outside = (obs > clean).any(axis=1)
    bad = np.flatnonzero((count != want) | outside)
    if len(bad):
        row = int(np.flatnonzero(rows)[bad[0]])
        why = ("an observed positive that is not a clean positive" if outside[bad[0]]
               else f"{int(count[bad[0]])} observed positives (want {int(want[bad[0]])})")
        raise DataError(f"{path}: {len(bad)} train/val rows break the single-positive protocol (row {row} has "
                        f"{why}); {FIX}")


def require_splits(path: Path, splits: Any) -> None:
    """DataError unless each of train, val and test has rows (training and model selection need all three)."""
    names = set(np.asarray(splits, dtype=object).tolist())
    empty = [s for s in SPLITS if s not in names]
    if empty:
        raise DataError(f"{path}: no {' and no '.join(empty)} rows (training needs train, val and test rows); {FIX}")
