"""Each formatter on a fixture tree in the real raw format gives the hand-written rows and labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spmlbench.data.datasets.coco import format_coco
from spmlbench.data.datasets.cub import format_cub
from spmlbench.data.manifest import load_manifest
from spmlbench.data.datasets.nuswide import format_nuswide
from spmlbench.data.registry import FormatInput, dataset_names, get_adapter
from spmlbench.data.datasets.voc import format_voc
from spmlbench.errors import DataError

try:  # tests/ as a package or on sys.path (rootdir layout)
    from tests import fixtures_raw as fx
except ImportError:  # pragma: no cover
    import fixtures_raw as fx  # type: ignore[no-redef]


def rows(y: np.ndarray) -> list[list[int]]:
    return [np.flatnonzero(r).tolist() for r in y]


def inp(tmp_path: Path, *roots: Path, manifest: str | None = None) -> FormatInput:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    return FormatInput(roots=roots, work=work, manifest=load_manifest(manifest) if manifest else None)


def test_registry_lists_every_dataset() -> None:
    assert dataset_names() == ["digits", "voc", "coco", "nuswide", "cub"]
    assert get_adapter("digits").default_backbone == "pixels"
    assert {get_adapter(n).default_backbone for n in ("voc", "coco", "nuswide", "cub")} == {"resnet50"}
    assert get_adapter("voc").manifest == "voc"


def test_voc(tmp_path: Path) -> None:
    fx.build_voc(tmp_path / "raw")
    # Lines are right-aligned like the real files.
    main = tmp_path / "raw/VOCdevkit/VOC2012/ImageSets/Main"
    assert "2008_000015  1\n" in (main / "bottle_train.txt").read_text()
    assert "2008_000015  0\n" in (main / "tvmonitor_train.txt").read_text()
    fmt = format_voc(inp(tmp_path, tmp_path / "raw", manifest="voc"))
    assert fmt.train_images == [
        "JPEGImages/2007_000999.jpg",
        "JPEGImages/2008_000002-1.jpg",  # '-' < '.': file-name order, not id order
        "JPEGImages/2008_000002.jpg",
        "JPEGImages/2008_000008.jpg",
        "JPEGImages/2008_000015.jpg",
    ]
    # aeroplane=0, bird=2, bottle=4, cat=7, dog=11, horse=12, person=14, train=18 (difficult 0 -> negative)
    assert rows(fmt.y_train) == [[0], [18], [7, 11], [12, 14], [4]]
    assert fmt.test_images == ["JPEGImages/2007_000033.jpg", "JPEGImages/2008_000001.jpg"]
    assert rows(fmt.y_test) == [[0, 2], [14]]
    assert fmt.image_root == tmp_path / "raw/VOCdevkit/VOC2012"
    assert len(fmt.class_names) == 20 and fmt.class_names[19] == "tvmonitor"
    assert len(fmt.read_files) == 40


def test_voc_inconsistent_class_files(tmp_path: Path) -> None:
    fx.build_voc(tmp_path / "raw")
    f = tmp_path / "raw/VOCdevkit/VOC2012/ImageSets/Main/cat_val.txt"
    f.write_text(f.read_text().splitlines(keepends=True)[0])
    with pytest.raises(DataError, match="cat_val.txt"):
        format_voc(inp(tmp_path, tmp_path / "raw", manifest="voc"))


def test_voc_missing_tree(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="ImageSets/Main: not found"):
        format_voc(inp(tmp_path, tmp_path / "empty", manifest="voc"))


def test_coco(tmp_path: Path) -> None:
    fx.build_coco(tmp_path / "coco")
    fmt = format_coco(inp(tmp_path, tmp_path / "coco"))
    assert fmt.class_names == ["person", "bicycle", "car", "airplane"]  # category id order 1, 2, 3, 5
    # annotated train ids {9, 10, 100, 1000 (crowd only)} as strings: "10" < "100" < "1000" < "9"
    assert fmt.train_images == [
        "train2014/COCO_train2014_000000000010.jpg",
        "train2014/COCO_train2014_000000000100.jpg",
        "train2014/COCO_train2014_000000001000.jpg",
        "train2014/COCO_train2014_000000000009.jpg",
    ]
    assert rows(fmt.y_train) == [[2, 3], [1], [0], [0]]
    assert fmt.test_images == ["val2014/COCO_val2014_000000000042.jpg", "val2014/COCO_val2014_000000000007.jpg"]
    assert rows(fmt.y_test) == [[3], [0, 2]]
    assert fmt.image_root == tmp_path / "coco"


def test_coco_category_lists_must_agree(tmp_path: Path) -> None:
    fx.build_coco(tmp_path / "coco", val_categories=[(1, "person"), (2, "bicycle"), (3, "car"), (5, "plane")])
    with pytest.raises(DataError, match="category list differs"):
        format_coco(inp(tmp_path, tmp_path / "coco"))


def test_coco_bad_annotation(tmp_path: Path) -> None:
    root = fx.build_coco(tmp_path / "coco")
    path = root / "annotations/instances_train2014.json"
    data = json.loads(path.read_text())
    data["annotations"].append({"id": 99, "image_id": 12345, "category_id": 1, "iscrowd": 0})
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="unknown image 12345"):
        format_coco(inp(tmp_path, root))


def test_cub(tmp_path: Path) -> None:
    fx.build_cub(tmp_path / "cub")
    lines = (tmp_path / "cub/CUB_200_2011/attributes/image_attribute_labels.txt").read_text().splitlines()
    assert {len(line.split()) for line in lines} == {5, 6}  # trailing field on some rows
    fmt = format_cub(inp(tmp_path, tmp_path / "cub"))
    assert fmt.class_names == fx.CUB_ATTRIBUTES
    # images.txt order 3, 1, 5, 2, 4; train = {1, 3, 5}
    assert fmt.train_images == [
        "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
        "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
        "003.Sooty_Albatross/Sooty_Albatross_0031_1066.jpg",
    ]
    np.testing.assert_array_equal(fmt.y_train, [[1, 1, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert fmt.test_images == [
        "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
        "002.Laysan_Albatross/Laysan_Albatross_0003_1033.jpg",
    ]
    np.testing.assert_array_equal(fmt.y_test, [[0, 1, 0, 1], [0, 0, 0, 1]])
    assert fmt.image_root == tmp_path / "cub/CUB_200_2011/images"


@pytest.mark.parametrize("change", ["drop", "repeat"])
def test_cub_every_pair_exactly_once(tmp_path: Path, change: str) -> None:
    fx.build_cub(tmp_path / "cub")
    f = tmp_path / "cub/CUB_200_2011/attributes/image_attribute_labels.txt"
    lines = f.read_text().splitlines(keepends=True)
    f.write_text("".join(lines[1:] if change == "drop" else lines + lines[:1]))
    with pytest.raises(DataError, match="missing or repeated"):
        format_cub(inp(tmp_path, tmp_path / "cub"))


def test_nuswide(tmp_path: Path) -> None:
    root = fx.build_nuswide(tmp_path / "nus")
    fmt = format_nuswide(inp(tmp_path, root, manifest="nuswide"))
    assert fmt.train_images == fx.NUS_TRAIN_IMAGES and fmt.test_images == fx.NUS_VAL_IMAGES
    assert rows(fmt.y_train) == [[0, 42], [], [2, 55, 75], [80]]
    assert rows(fmt.y_test) == [[], [75]]
    assert fmt.class_names[75] == "water" and fmt.class_names[76] == "waterfall"
    assert fmt.notes["unlabeled_rows"] == {"train": 1, "test": 1}
    assert fmt.image_root == root / "Flickr"


def test_nuswide_wrong_width(tmp_path: Path) -> None:
    root = fx.build_nuswide(tmp_path / "nus")
    np.save(root / "formatted_val_labels.npy", np.zeros((2, 80)))
    with pytest.raises(DataError, match=r"formatted_val_labels.npy: shape \(2, 80\)"):
        format_nuswide(inp(tmp_path, root, manifest="nuswide"))


def test_voc_prefers_voc2012_beside_voc2007(tmp_path: Path) -> None:
    fx.build_voc(tmp_path / "raw")
    other = tmp_path / "raw/VOCdevkit/VOC2007/ImageSets/Main"
    other.mkdir(parents=True)
    for cls in fx.VOC_CLASSES:
        for split in ("train", "val"):
            (other / f"{cls}_{split}.txt").write_text("000005  1\n")
    fmt = format_voc(inp(tmp_path, tmp_path / "raw", manifest="voc"))
    assert fmt.image_root == tmp_path / "raw/VOCdevkit/VOC2012"
    assert len(fmt.train_images) == 5


@pytest.mark.parametrize(
    ("where", "change"),
    [
        ("annotations", lambda a: a.pop("image_id")),
        ("annotations", lambda a: a.update(category_id="person")),
        ("categories", lambda c: c.pop("id")),
        ("images", lambda i: i.update(id=None)),
    ],
)
def test_coco_malformed_entries_are_one_line_data_errors(tmp_path: Path, where: str, change) -> None:
    root = fx.build_coco(tmp_path / "coco")
    path = root / "annotations/instances_val2014.json"
    data = json.loads(path.read_text())
    change(data[where][0])
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"instances_val2014.json: .*; re-extract annotations_trainval2014.zip"):
        format_coco(inp(tmp_path, root))


@pytest.mark.parametrize("name", ["images.txt", "attributes/image_attribute_labels.txt", "train_test_split.txt"])
def test_cub_undecodable_file_is_a_data_error(tmp_path: Path, name: str) -> None:
    fx.build_cub(tmp_path / "cub")
    f = tmp_path / "cub/CUB_200_2011" / name
    f.write_bytes(f.read_bytes() + b"\xff\xfe 1\n")
    with pytest.raises(DataError, match=rf"{name.split('/')[-1]}: .*re-extract CUB_200_2011.tgz"):
        format_cub(inp(tmp_path, tmp_path / "cub"))


def test_voc_undecodable_class_file_is_a_data_error(tmp_path: Path) -> None:
    fx.build_voc(tmp_path / "raw")
    f = tmp_path / "raw/VOCdevkit/VOC2012/ImageSets/Main/cat_train.txt"
    f.write_bytes(b"\xff\xfe" + f.read_bytes())
    with pytest.raises(DataError, match=r"cat_train.txt: .*re-extract VOCtrainval_11-May-2012.tar"):
        format_voc(inp(tmp_path, tmp_path / "raw", manifest="voc"))


@pytest.mark.parametrize("content", [b"", b"\x93NUMPY"])
def test_nuswide_empty_or_truncated_file_is_a_data_error(tmp_path: Path, content: bytes) -> None:
    root = fx.build_nuswide(tmp_path / "nus")
    (root / "formatted_train_labels.npy").write_bytes(content)
    with pytest.raises(DataError, match=r"formatted_train_labels.npy: not a plain numpy array file"):
        format_nuswide(inp(tmp_path, root, manifest="nuswide"))
