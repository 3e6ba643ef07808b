"""``spmlbench features`` command."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spmlbench.features.store import load_features, read_features
from test_features_util import GRAYS, make_dataset


def test_features_command_writes_the_cache(cli, home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other_home"
    make_dataset(other, n=4, gray=True)
    res = cli("features", "tiny", "--backbone", "pixels", "--home", str(other), "--quiet")
    assert res.code == 0, res.err
    assert res.out.strip().endswith("tiny/features/pixels.parquet")
    feats = load_features("tiny", "pixels", home=other)
    np.testing.assert_array_equal(feats[:, 0], np.array(GRAYS[:4], dtype=np.float32) / np.float32(255))


def test_weights_none_is_recorded(cli, home: Path) -> None:
    make_dataset(home, n=2)
    res = cli("features", "tiny", "--backbone", "resnet18", "--weights", "none", "--device", "cpu", "--image-size", "16", "--quiet")
    assert res.code == 0, res.err
    meta = read_features(home / "tiny" / "features" / "resnet18.parquet")[1]
    assert meta["weights"] == "none" and meta["image_size"] == 16


def test_user_errors_exit_2_with_one_line(cli, home: Path) -> None:
    make_dataset(home, n=2)
    res = cli("features", "tiny", "--backbone", "nope")
    assert res.code == 2 and "unknown backbone 'nope'" in res.err and "resnet50" in res.err
    res = cli("features", "tiny", "--backbone", "pixels", "--weights", "imagenet")
    assert res.code == 2 and "--weights 'imagenet'" in res.err
    res = cli("features", "absent")  # neither prepared nor a known dataset
    assert res.code == 2 and "unknown dataset 'absent'; choose one of: coco, cub, digits, nuswide, voc" in res.err
    assert len(res.err.strip().splitlines()) == 1
    res = cli("features", "voc")  # known, not prepared
    assert res.code == 2 and "spmlbench prepare voc" in res.err
