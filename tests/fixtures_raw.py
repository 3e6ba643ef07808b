"""Builders of tiny raw dataset trees and archives in the real formats (VOC, COCO, CUB, NUS-WIDE).

Each builder writes the files the way the official release lays them out, with the quirks the
formatters must handle (right-aligned VOC values and ``0`` difficult labels; COCO ids that sort
differently as strings and numbers, crowd annotations, unannotated images; shuffled CUB rows with
an extra trailing field). The expected image order and label matrix of each fixture are written
out by hand in tests/test_formats.py. Images are real 8x8 JPEGs so feature extractors can open them.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
]

# image id -> {class: value}; every class not named is -1. Listed in the order written to the files.
VOC_TRAIN = {
    "2008_000015": {"bottle": 1, "tvmonitor": 0},
    "2008_000008": {"horse": 1, "person": 1},
    "2008_000003": {"dog": 0},  # only a difficult label: no positive, dropped
    "2007_000999": {"aeroplane": 1},
    "2008_000010": {},  # all -1: dropped
    "2008_000002": {"cat": 1, "dog": 1, "sofa": 0},
    "2008_000002-1": {"train": 1},  # "-" < ".": sorts before 2008_000002 as a file name only
}
VOC_VAL = {
    "2008_000005": {"chair": 0},  # dropped
    "2008_000001": {"person": 1},
    "2007_000033": {"aeroplane": 1, "bird": 1, "person": 0},
}


def write_jpeg(path: Path, seed: int = 0) -> None:
    """Write a real 8x8 RGB JPEG (deterministic content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.RandomState(seed).randint(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def build_voc(root: Path) -> Path:
    """Write ``root/VOCdevkit/VOC2012/{ImageSets/Main,JPEGImages}``; return the VOCdevkit folder."""
    voc = root / "VOCdevkit" / "VOC2012"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    for split, table in (("train", VOC_TRAIN), ("val", VOC_VAL)):
        for cls in VOC_CLASSES:
            # VOC right-aligns the value in a 2-character field: "2008_000015  1", "2008_000008 -1".
            lines = [f"{image_id} {values.get(cls, -1):>2d}\n" for image_id, values in table.items()]
            (main / f"{cls}_{split}.txt").write_text("".join(lines), encoding="utf-8")
        (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in table), encoding="utf-8")
    for n, image_id in enumerate([*VOC_TRAIN, *VOC_VAL]):
        write_jpeg(voc / "JPEGImages" / f"{image_id}.jpg", seed=n)
    (voc / "Annotations").mkdir()
    return root / "VOCdevkit"


def make_tar(folder: Path, archive: Path, *, arcname: str | None = None, extra: dict[str, Path] | None = None) -> Path:
    """Tar ``folder`` (as ``arcname``, default its name) plus ``extra`` {arcname: path}; gzip if the name says so."""
    mode = "w:gz" if archive.name.endswith((".tgz", ".tar.gz")) else "w"
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=arcname or folder.name)
        for name, path in (extra or {}).items():
            tar.add(path, arcname=name)
    return archive


def build_voc_tar(root: Path, name: str = "VOCtrainval_11-May-2012.tar") -> Path:
    """Build the VOC tree under ``root/src`` and tar it as the official archive does."""
    devkit = build_voc(root / "src")
    return make_tar(devkit, root / name)


# COCO: categories (id, name), listed shuffled in the json; ids skip 4 like the real ones skip 12.
COCO_CATEGORIES = [(5, "airplane"), (1, "person"), (3, "car"), (2, "bicycle")]
# split -> (all image ids in json order, annotations (image_id, category_id, iscrowd))
COCO_TRAIN = (
    [9, 25, 10, 1000, 100, 3],
    [(9, 1, 0), (10, 3, 0), (10, 5, 1), (100, 2, 0), (100, 2, 0), (1000, 1, 1)],  # 25 and 3: unannotated
)
COCO_VAL = ([7, 300, 42], [(42, 5, 0), (7, 1, 0), (7, 3, 0)])  # 300: unannotated


def _coco_json(split: str, image_ids: list[int], anns: list[tuple[int, int, int]], categories: list[tuple[int, str]]) -> dict:
    return {
        "info": {"description": "fixture"},
        "images": [
            {"id": i, "file_name": f"COCO_{split}2014_{i:012d}.jpg", "width": 8, "height": 8} for i in image_ids
        ],
        "annotations": [
            {"id": n + 1, "image_id": i, "category_id": c, "iscrowd": crowd, "bbox": [0, 0, 1, 1], "area": 1.0}
            for n, (i, c, crowd) in enumerate(anns)
        ],
        "categories": [{"id": c, "name": name, "supercategory": "x"} for c, name in categories],
    }


def build_coco(root: Path, *, val_categories: list[tuple[int, str]] | None = None) -> Path:
    """Write ``root/{annotations,train2014,val2014}`` like the three official zips; return ``root``."""
    (root / "annotations").mkdir(parents=True)
    val_cats = val_categories if val_categories is not None else list(reversed(COCO_CATEGORIES))
    for split, (ids, anns), cats in (("train", COCO_TRAIN, COCO_CATEGORIES), ("val", COCO_VAL, val_cats)):
        data = _coco_json(split, ids, anns, cats)
        (root / "annotations" / f"instances_{split}2014.json").write_text(json.dumps(data), encoding="utf-8")
        for i in ids:
            write_jpeg(root / f"{split}2014" / f"COCO_{split}2014_{i:012d}.jpg", seed=i)
    return root


def build_coco_zips(root: Path) -> dict[str, Path]:
    """The three official zips built from a fixture tree: {file name: path}."""
    tree = build_coco(root / "src")
    out = {}
    for name, parts in (
        ("train2014.zip", ["train2014"]),
        ("val2014.zip", ["val2014"]),
        ("annotations_trainval2014.zip", ["annotations"]),
    ):
        path = root / name
        with zipfile.ZipFile(path, "w") as zf:
            for part in parts:
                for f in sorted((tree / part).rglob("*")):
                    zf.write(f, f.relative_to(tree).as_posix())
        out[name] = path
    return out


CUB_ATTRIBUTES = [
    "has_bill_shape::curved_(up_or_down)",
    "has_bill_shape::dagger",
    "has_wing_color::blue",
    "has_wing_color::brown",
]
# images.txt rows, in file order (shuffled ids on purpose)
CUB_IMAGES = [
    (3, "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg"),
    (1, "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg"),
    (5, "003.Sooty_Albatross/Sooty_Albatross_0031_1066.jpg"),
    (2, "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg"),
    (4, "002.Laysan_Albatross/Laysan_Albatross_0003_1033.jpg"),
]
CUB_IS_TRAIN = {1: 1, 2: 0, 3: 1, 4: 0, 5: 1}
# (image_id, attribute_id) -> (is_present, certainty_id); every pair present. A certainty of 1
# ("not visible") or 2 ("guessing") must not change the label (certainty is ignored).
CUB_LABELS = {
    (1, 1): (1, 1), (1, 2): (0, 3), (1, 3): (1, 4), (1, 4): (0, 4),
    (2, 1): (0, 4), (2, 2): (1, 2), (2, 3): (0, 1), (2, 4): (1, 3),
    (3, 1): (1, 3), (3, 2): (1, 4), (3, 3): (1, 2), (3, 4): (1, 4),
    (4, 1): (0, 2), (4, 2): (0, 4), (4, 3): (0, 3), (4, 4): (1, 1),
    (5, 1): (0, 4), (5, 2): (0, 1), (5, 3): (0, 4), (5, 4): (0, 2),  # no attribute: kept
}


def build_cub(root: Path) -> Path:
    """Write ``root/CUB_200_2011/...`` plus the top-level ``root/attributes.txt``; return ``root``."""
    cub = root / "CUB_200_2011"
    (cub / "attributes").mkdir(parents=True)
    (root / "attributes.txt").write_text(
        "".join(f"{i} {name}\n" for i, name in enumerate(CUB_ATTRIBUTES, start=1)), encoding="utf-8"
    )
    (cub / "images.txt").write_text("".join(f"{i} {p}\n" for i, p in CUB_IMAGES), encoding="utf-8")
    order = [5, 2, 4, 1, 3]
    (cub / "train_test_split.txt").write_text("".join(f"{i} {CUB_IS_TRAIN[i]}\n" for i in order), encoding="utf-8")
    pairs = sorted(CUB_LABELS, key=lambda p: ((p[0] * 7 + p[1] * 3) % 11, p))  # shuffled, deterministic
    lines = []
    for n, (img, attr) in enumerate(pairs):
        present, certainty = CUB_LABELS[(img, attr)]
        extra = " 0" if n % 4 == 0 else ""  # trailing field, as on some lines of the real file
        lines.append(f"{img} {attr} {present} {certainty} 12.5{extra}\n")
    (cub / "attributes" / "image_attribute_labels.txt").write_text("".join(lines), encoding="utf-8")
    for n, (_, rel) in enumerate(CUB_IMAGES):
        write_jpeg(cub / "images" / rel, seed=n)
    return root


def build_cub_tgz(root: Path, name: str = "CUB_200_2011.tgz") -> Path:
    """The official archive layout: ``CUB_200_2011/`` and a top-level ``attributes.txt``."""
    src = build_cub(root / "src")
    return make_tar(src / "CUB_200_2011", root / name, extra={"attributes.txt": src / "attributes.txt"})


NUS_NUM_CLASSES = 81
NUS_TRAIN_IMAGES = ["actor/0001_2124494179.jpg", "airport/0002_1.jpg", "beach/0003_2.jpg", "sky/0004_3.jpg"]
NUS_VAL_IMAGES = ["zebra/0005_4.jpg", "water/0006_5.jpg"]


def nus_labels() -> tuple[np.ndarray, np.ndarray]:
    """Fixture label matrices (train 4 x 81 with one label-less row, val 2 x 81 with one)."""
    y_train = np.zeros((4, NUS_NUM_CLASSES), dtype=np.float32)
    y_train[0, [0, 42]] = 1
    y_train[2, [2, 55, 75]] = 1
    y_train[3, 80] = 1
    y_val = np.zeros((2, NUS_NUM_CLASSES), dtype=np.float32)
    y_val[1, 75] = 1
    return y_train, y_val


def build_nuswide(root: Path, *, missing: tuple[str, ...] = ()) -> Path:
    """Write the Zenodo formatted files in ``root`` and a ``root/Flickr/`` tree (minus ``missing``)."""
    root.mkdir(parents=True, exist_ok=True)
    y_train, y_val = nus_labels()
    np.save(root / "formatted_train_images.npy", np.array(NUS_TRAIN_IMAGES))
    np.save(root / "formatted_train_labels.npy", y_train)
    np.save(root / "formatted_val_images.npy", np.array(NUS_VAL_IMAGES))
    np.save(root / "formatted_val_labels.npy", y_val)
    for n, rel in enumerate(NUS_TRAIN_IMAGES + NUS_VAL_IMAGES):
        if rel not in missing:
            write_jpeg(root / "Flickr" / rel, seed=n)
    return root
