"""Zenodo 10162606 feature import: shape and row-alignment checks against labels.parquet."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spmlbench.errors import DataError
from spmlbench.features.store import load_features, read_features
from spmlbench.features.zenodo import import_zenodo_features, same_image
from test_features_util import make_dataset


def _record(folder: Path, images: list[str], n_train: int, *, prefix: str = "JPEGImages/", dim: int = 2048) -> np.ndarray:
    """Write the record's four files for a dataset whose first ``n_train`` rows are official train."""
    folder.mkdir(parents=True, exist_ok=True)
    feats = np.random.default_rng(5).random((len(images), dim))  # float64 in the record, as an example
    np.save(folder / "train_features_imagenet_resnet50.npy", feats[:n_train])
    np.save(folder / "val_features_imagenet_resnet50.npy", feats[n_train:])
    np.save(folder / "formatted_train_images.npy", np.array([prefix + i for i in images[:n_train]]))
    np.save(folder / "formatted_val_images.npy", np.array([prefix + i for i in images[n_train:]]))
    return feats


def test_import_aligns_train_then_test_rows(home: Path, tmp_path: Path) -> None:
    images = make_dataset(home, n=10)  # 6 train + 2 val (official train), 2 test (official val)
    feats = _record(tmp_path / "rec" / "tiny", images, 8)
    path = import_zenodo_features("tiny", tmp_path / "rec")
    assert path.name == "resnet50-zenodo.parquet"
    loaded = load_features("tiny", "resnet50-zenodo")
    np.testing.assert_array_equal(loaded, feats.astype(np.float32))
    meta = read_features(path)[1]
    assert meta["source_dtype"] == "float64" and meta["alignment"][0] == "train: every image checked"
    assert set(meta["source_files"]) == {
        "train_features_imagenet_resnet50.npy", "val_features_imagenet_resnet50.npy",
        "formatted_train_images.npy", "formatted_val_images.npy",
    }


def test_wrong_row_count_is_refused(home: Path, tmp_path: Path) -> None:
    images = make_dataset(home, n=10)
    _record(tmp_path / "rec", images, 7)  # a split at the wrong place
    with pytest.raises(DataError, match=r"shape \(7, 2048\), expected \(8, 2048\)"):
        import_zenodo_features("tiny", tmp_path / "rec")


def test_wrong_dimension_is_refused(home: Path, tmp_path: Path) -> None:
    images = make_dataset(home, n=10)
    _record(tmp_path / "rec", images, 8, dim=512)
    with pytest.raises(DataError, match="expected \\(8, 2048\\)"):
        import_zenodo_features("tiny", tmp_path / "rec")


def test_misaligned_images_are_refused(home: Path, tmp_path: Path) -> None:
    images = make_dataset(home, n=10)
    swapped = images[:]
    swapped[2], swapped[3] = swapped[3], swapped[2]
    _record(tmp_path / "rec", swapped, 8)
    with pytest.raises(DataError, match="row 2 is 'JPEGImages/sub/img03.png'"):
        import_zenodo_features("tiny", tmp_path / "rec")


def test_missing_files_say_what_to_download(home: Path, tmp_path: Path) -> None:
    make_dataset(home, n=4)
    with pytest.raises(DataError, match="10162606"):
        import_zenodo_features("tiny", tmp_path)


def test_same_image_matches_on_path_suffix_only() -> None:
    assert same_image("JPEGImages/2008_000008.jpg", "2008_000008.jpg")
    assert same_image("train2014/x.jpg", "coco/train2014/x.jpg")
    assert not same_image("a/x.jpg", "b/x.jpg")
    assert not same_image("xx.jpg", "x.jpg")
