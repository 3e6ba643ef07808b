"""CUB-200-2011 with its 312 binary attributes as labels -> formatted files (docs/protocol.md, section 2).

Files are located by searching the extracted tree. Label = ``is_present`` (certainty ignored, no
threshold), pivoted by (image_id, attribute_id) with every pair required exactly once; extra
trailing fields are tolerated. All images are kept, in ``images.txt`` order within each split.
The image root is ``CUB_200_2011/images``; paths are the ``images.txt`` values.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from spmlbench.data.registry import DATASETS, DatasetAdapter, FormatInput, Formatted
from spmlbench.errors import DataError

RAW_ARCHIVE = "CUB_200_2011.tgz"


def _rows(path: Path, min_fields: int) -> Iterator[tuple[int, list[str]]]:
    """Non-empty lines of ``path`` split on whitespace, with line numbers; fewer fields -> DataError."""
    with path.open(encoding="utf-8") as fh:
        lineno = 0
        try:
            for lineno, line in enumerate(fh, start=1):
                tokens = line.split()
                if not tokens:
                    continue
                if len(tokens) < min_fields:
                    raise DataError(
                        f"{path}:{lineno}: expected {min_fields} fields, got {line.strip()!r}; re-extract {RAW_ARCHIVE}"
                    )
                yield lineno, tokens
        except UnicodeDecodeError as exc:
            raise DataError(
                f"{path}: not a UTF-8 text file ({exc.reason} after line {lineno}); re-extract {RAW_ARCHIVE}"
            ) from None


def _int(path: Path, lineno: int, token: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise DataError(f"{path}:{lineno}: {token!r} is not an integer; re-extract {RAW_ARCHIVE}") from None


def read_attribute_names(path: Path) -> list[str]:
    """Attribute names in id order from ``attributes.txt`` (``<id> has_<group>::<value>``; ids 1..A)."""
    rows = list(_rows(path, 2))
    ids = [_int(path, ln, t[0]) for ln, t in rows]
    if ids != list(range(1, len(ids) + 1)):
        raise DataError(f"{path}: attribute ids are not 1..{len(ids)} in order; re-extract {RAW_ARCHIVE}")
    return [" ".join(t[1:]) for _, t in rows]


def read_images(path: Path) -> tuple[list[int], list[str]]:
    """(image ids, relative paths) in ``images.txt`` order."""
    ids, paths = [], []
    for ln, t in _rows(path, 2):
        ids.append(_int(path, ln, t[0]))
        paths.append(t[1])
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: duplicate image ids; re-extract {RAW_ARCHIVE}")
    return ids, paths


def read_is_train(path: Path, ids: list[int]) -> np.ndarray:
    """Boolean per image (``images.txt`` order): ``train_test_split.txt`` says 1 (train)."""
    value: dict[int, int] = {}
    for ln, t in _rows(path, 2):
        image_id, flag = _int(path, ln, t[0]), _int(path, ln, t[1])
        if image_id in value or flag not in (0, 1):
            raise DataError(f"{path}:{ln}: duplicate image id or flag not 0/1; re-extract {RAW_ARCHIVE}")
        value[image_id] = flag
    if value.keys() != set(ids):
        raise DataError(f"{path}: does not list exactly the images of images.txt; re-extract {RAW_ARCHIVE}")
    return np.array([value[i] == 1 for i in ids], dtype=bool)


def read_attribute_labels(path: Path, ids: list[int], num_attributes: int) -> np.ndarray:
    """Pivot ``image_attribute_labels.txt`` to (images, attributes) ``is_present`` with every pair once."""
    row_of = {image_id: r for r, image_id in enumerate(ids)}
    rows, cols, vals = array("q"), array("q"), array("b")
    for ln, t in _rows(path, 3):
        image_id, attr_id, present = _int(path, ln, t[0]), _int(path, ln, t[1]), _int(path, ln, t[2])
        if image_id not in row_of or not 1 <= attr_id <= num_attributes or present not in (0, 1):
            raise DataError(
                f"{path}:{ln}: unknown image {image_id}, attribute {attr_id} or is_present {present}; "
                f"re-extract {RAW_ARCHIVE}"
            )
        rows.append(row_of[image_id])
        cols.append(attr_id - 1)
        vals.append(present)
    seen = np.zeros((len(ids), num_attributes), dtype=np.int32)
    r_idx = np.frombuffer(rows, dtype=np.int64).astype(np.intp)
    c_idx = np.frombuffer(cols, dtype=np.int64).astype(np.intp)
    np.add.at(seen, (r_idx, c_idx), 1)
    bad = np.argwhere(seen != 1)
    if len(bad):
        r, c = bad[0]
        raise DataError(
            f"{path}: {len(bad)} (image, attribute) pairs are missing or repeated, e.g. image {ids[r]} "
            f"attribute {c + 1} appears {seen[r, c]} times; re-extract {RAW_ARCHIVE}"
        )
    y = np.zeros((len(ids), num_attributes), dtype=np.int8)
    y[r_idx, c_idx] = np.frombuffer(vals, dtype=np.int8)
    return y


def format_cub(inp: FormatInput) -> Formatted:
    """Format CUB-200-2011 attributes from the extracted tree (files located by search)."""
    hint = f"point --from at the extracted CUB_200_2011 folder (with attributes.txt) or {RAW_ARCHIVE}"
    images_txt = inp.find("images.txt", hint=hint)
    split_txt = inp.find("train_test_split.txt", hint=hint)
    labels_txt = inp.find("attributes", "image_attribute_labels.txt", hint=hint)
    names_txt = inp.find("attributes.txt", hint=hint)
    names = read_attribute_names(names_txt)
    ids, paths = read_images(images_txt)
    is_train = read_is_train(split_txt, ids)
    y = read_attribute_labels(labels_txt, ids, len(names))
    root = images_txt.parent / "images"
    read = {
        "images.txt": images_txt,
        "train_test_split.txt": split_txt,
        "attributes/image_attribute_labels.txt": labels_txt,
        "attributes.txt": names_txt,
    }
    train = np.nonzero(is_train)[0]
    test = np.nonzero(~is_train)[0]
    return Formatted(
        names, [paths[i] for i in train], y[train], [paths[i] for i in test], y[test], root, read_files=read
    )


DATASETS.add(
    "cub",
    DatasetAdapter(
        name="cub",
        title="CUB-200-2011 (312 attributes)",
        manifest="cub",
        default_backbone="resnet50",
        format=format_cub,
        raw_files=(RAW_ARCHIVE,),
    ),
)
