"""MS-COCO 2014 -> formatted files (docs/protocol.md, section 2).

Class order = ``categories`` sorted by id (train and val must agree). Only images with at least
one annotation are kept (``iscrowd`` included); rows are sorted by the image id as a decimal
*string*. The image root holds ``train2014/`` and ``val2014/``; paths are
``{split}2014/COCO_{split}2014_{id:012d}.jpg``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from spmlbench.data.registry import DATASETS, DatasetAdapter, FormatInput, Formatted
from spmlbench.errors import DataError

ANNOTATIONS = "annotations_trainval2014.zip"
RAW_FILES = ("train2014.zip", "val2014.zip", ANNOTATIONS)
T = TypeVar("T")


def load_instances(path: Path) -> dict[str, Any]:
    """Read an ``instances_*.json`` file (DataError when it is not valid COCO json)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        _ = data["categories"], data["images"], data["annotations"]
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a COCO instances file ({exc}); re-extract {ANNOTATIONS}") from None
    return data


def categories(data: dict[str, Any]) -> list[tuple[int, str]]:
    """(id, name) of every category, sorted by id."""
    return sorted((int(c["id"]), str(c["name"])) for c in data["categories"])


def format_split(data: dict[str, Any], cats: list[tuple[int, str]], split: str, path: Path) -> tuple[list[str], np.ndarray]:
    """Return (image paths, clean labels) of the annotated images of one split, ids sorted as strings."""
    column = {cid: i for i, (cid, _) in enumerate(cats)}
    known = {int(img["id"]) for img in data["images"]}
    positives: dict[int, set[int]] = {}
    for ann in data["annotations"]:
        image_id, cat_id = int(ann["image_id"]), int(ann["category_id"])
        if image_id not in known or cat_id not in column:
            raise DataError(
                f"{path}: annotation {ann.get('id')} refers to unknown image {image_id} or "
                f"category {cat_id}; re-extract {ANNOTATIONS}"
            )
        positives.setdefault(image_id, set()).add(column[cat_id])
    ids = sorted(positives, key=str)
    y = np.zeros((len(ids), len(cats)), dtype=np.int8)
    for row, image_id in enumerate(ids):
        y[row, sorted(positives[image_id])] = 1
    images = [f"{split}2014/COCO_{split}2014_{i:012d}.jpg" for i in ids]
    return images, y


def _checked(path: Path, fn: Callable[[], T]) -> T:
    """Run ``fn``; a missing or mistyped json field (KeyError/TypeError/ValueError) becomes a DataError on ``path``."""
    try:
        return fn()
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(
            f"{path}: malformed COCO entry ({type(exc).__name__}: {exc}); re-extract {ANNOTATIONS}"
        ) from None


def format_coco(inp: FormatInput) -> Formatted:
    """Format COCO 2014 from ``annotations/instances_{train,val}2014.json`` and the image folders."""
    hint = "point --from at a folder holding annotations/, train2014/ and val2014/ (or the three zips)"
    train_path = inp.find("annotations", "instances_train2014.json", hint=hint)
    val_path = inp.find("annotations", "instances_val2014.json", hint=hint)
    train_data, val_data = load_instances(train_path), load_instances(val_path)
    cats = _checked(train_path, lambda: categories(train_data))
    if cats != _checked(val_path, lambda: categories(val_data)):
        raise DataError(f"{val_path}: category list differs from {train_path.name}; re-extract {ANNOTATIONS}")
    train_images, y_train = _checked(train_path, lambda: format_split(train_data, cats, "train", train_path))
    test_images, y_test = _checked(val_path, lambda: format_split(val_data, cats, "val", val_path))
    root = inp.find("train2014", kind="dir", hint=hint).parent
    if not (root / "val2014").is_dir():
        raise DataError(f"{root}: has train2014/ but no val2014/; extract val2014.zip beside it")
    read = {"annotations/instances_train2014.json": train_path, "annotations/instances_val2014.json": val_path}
    return Formatted([n for _, n in cats], train_images, y_train, test_images, y_test, root, read_files=read)


DATASETS.add(
    "coco",
    DatasetAdapter(
        name="coco",
        title="MS-COCO 2014",
        manifest="coco",
        default_backbone="resnet50",
        format=format_coco,
        raw_files=RAW_FILES,
    ),
)
