"""``spmlbench prepare`` / ``datasets`` end to end: digits offline, VOC from a folder, a tar or a download."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from spmlbench.data import label_matrix, load_labels
from spmlbench.data.registry import image_root
from spmlbench.paths import shipped

try:  # tests/ as a package or on sys.path (rootdir layout)
    from tests import fixtures_raw as fx
    from tests.http_server import LoopbackServer, http_server  # noqa: F401
    from tests.test_protocol import reference_sample, reference_split
except ImportError:  # pragma: no cover
    import fixtures_raw as fx  # type: ignore[no-redef]
    from http_server import LoopbackServer, http_server  # type: ignore[no-redef]  # noqa: F401
    from test_protocol import reference_sample, reference_split  # type: ignore[no-redef]

REPO_MANIFESTS = shipped()
VOC_TAR = "VOCtrainval_11-May-2012.tar"
# Hand-derived from fixtures_raw.VOC_TRAIN / VOC_VAL (see test_formats.test_voc).
VOC_IMAGES = [
    "JPEGImages/2007_000999.jpg",
    "JPEGImages/2008_000002-1.jpg",
    "JPEGImages/2008_000002.jpg",
    "JPEGImages/2008_000008.jpg",
    "JPEGImages/2008_000015.jpg",
    "JPEGImages/2007_000033.jpg",
    "JPEGImages/2008_000001.jpg",
]
VOC_ROWS = [[0], [18], [7, 11], [12, 14], [4], [0, 2], [14]]


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    return lines[0]


def voc_manifest_for(tmp_path: Path, archive: Path, urls: list[str] | None = None) -> Path:
    """A manifest folder whose voc.toml pins ``archive`` (size, md5, sha256) and optional URLs."""
    import tomllib

    folder = tmp_path / "manifests"
    folder.mkdir()
    text = (REPO_MANIFESTS / "voc.toml").read_text()
    data = archive.read_bytes()
    real = tomllib.loads(text)["files"][0]
    text = text.replace(str(real["size"]), str(len(data)))
    text = text.replace(real["md5"], hashlib.md5(data).hexdigest())
    text = text.replace(real["sha256"], hashlib.sha256(data).hexdigest())
    if urls is not None:
        start = text.index("urls = [", text.index("[[files]]"))
        end = text.index("]", start) + 1
        text = text[:start] + "urls = [" + ", ".join(f'"{u}"' for u in urls) + "]" + text[end:]
    (folder / "voc.toml").write_text(text)
    return folder


def check_voc_labels(home: Path, label_seed: int = 1200) -> None:
    df = load_labels("voc")
    assert df["image"].tolist() == VOC_IMAGES
    y = label_matrix(df)
    assert [np.flatnonzero(r).tolist() for r in y] == VOC_ROWS
    train_ref, val_ref = reference_split(5)
    assert [i for i, s in enumerate(df["split"]) if s == "val"] == val_ref
    assert [i for i, s in enumerate(df["split"]) if s == "train"] == train_ref
    assert df["split"].tolist()[5:] == ["test", "test"]
    obs = label_matrix(df, "observed")
    np.testing.assert_array_equal(obs[:5], reference_sample(y[:5], label_seed))
    np.testing.assert_array_equal(obs[5:], y[5:])
    for rel in VOC_IMAGES:
        assert (image_root("voc") / rel).is_file()
    meta = df.attrs["spmlbench"]
    assert meta["protocol"]["label_seed"] == label_seed


def test_prepare_digits_offline_and_datasets(cli, home: Path) -> None:
    res = cli("prepare", "--features", "none")
    assert res.code == 0, res.err
    df = load_labels("digits")
    meta = df.attrs["spmlbench"]
    for key in ("dataset", "num_classes", "class_names", "counts", "protocol", "sources",
                "expected_positives", "expected_counts", "count_mismatches"):
        assert key in meta
    assert meta["counts"] == {"train": 2400, "val": 600, "test": 3000}
    assert meta["protocol"] == {"val_frac": 0.2, "split_seed": 1200, "label_seed": 1200, "deviations": []}
    assert meta["expected_positives"]["computed"] >= 1.5
    y = label_matrix(df)
    obs = label_matrix(df, "observed")
    n_off = 3000
    np.testing.assert_array_equal(obs[:n_off], reference_sample(y[:n_off]))
    np.testing.assert_array_equal(obs[n_off:], y[n_off:])
    assert (obs[:n_off].sum(1) == 1).all()
    train_ref, _ = reference_split(n_off)
    assert [i for i, s in enumerate(df["split"][:n_off]) if s == "train"] == train_ref
    assert all((home / "digits" / "images" / p).is_file() for p in df["image"][::97])
    assert not [p for p in home.iterdir() if p.name.startswith(".")]  # no staging left
    listing = cli("datasets")
    assert listing.code == 0
    digits_row = next(line for line in listing.out.splitlines() if " digits " in line)
    assert "yes" in digits_row and "2400" in digits_row and "600" in digits_row and "3000" in digits_row
    assert any(" voc " in line and " no " in line for line in listing.out.splitlines())


def test_prepare_runs_features_after_labels(cli, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import spmlbench.features.extract as extract

    calls = []

    def fake(dataset, backbone=None, **kw):
        calls.append((dataset, backbone, (home / dataset / "labels.parquet").is_file()))
        return home / dataset / "features" / "pixels.parquet"

    monkeypatch.setattr(extract, "extract_features", fake)
    res = cli("prepare", "digits")
    assert res.code == 0, res.err
    assert calls == [("digits", None, True)]
    (home / "digits" / "features").mkdir()
    (home / "digits" / "features" / "pixels.parquet").write_bytes(b"x")
    res = cli("prepare", "digits", "--features", "none", "--label-seed", "3")  # re-prepare keeps caches
    assert res.code == 0, res.err
    assert (home / "digits" / "features" / "pixels.parquet").is_file()
    assert load_labels("digits").attrs["spmlbench"]["protocol"]["label_seed"] == 3
    listing = cli("datasets")
    assert "pixels" in next(line for line in listing.out.splitlines() if " digits " in line)


def test_prepare_voc_from_folder(cli, home: Path, tmp_path: Path) -> None:
    devkit = fx.build_voc(tmp_path / "user")
    res = cli("prepare", "voc", "--from", str(devkit), "--features", "none")
    assert res.code == 0, res.err
    assert "COUNT MISMATCH voc official_train: expected 5717, found 5" in res.err
    check_voc_labels(home)
    meta = load_labels("voc").attrs["spmlbench"]
    assert {"what": "official_train", "expected": 5717, "found": 5} in meta["count_mismatches"]
    assert {"what": "test", "expected": 5823, "found": 2} in meta["count_mismatches"]
    assert meta["expected_positives"]["paper"] == 1.5
    assert meta["sources"]["ImageSets/Main/aeroplane_train.txt"] == hashlib.sha256(
        (devkit / "VOC2012/ImageSets/Main/aeroplane_train.txt").read_bytes()
    ).hexdigest()
    assert (home / "voc" / "images").resolve() == (devkit / "VOC2012").resolve()
    assert not (home / "voc" / "raw").exists()
    # re-prepare with another label seed: reuses the user's folder, no --from needed
    res = cli("prepare", "voc", "--label-seed", "7", "--features", "none")
    assert res.code == 0, res.err
    check_voc_labels(home, label_seed=7)


def test_prepare_voc_tar_with_wrong_checksum(cli, home: Path, tmp_path: Path) -> None:
    tar = fx.build_voc_tar(tmp_path)  # the real manifest pins the 2 GB archive
    res = cli("prepare", "voc", "--from", str(tar), "--features", "none")
    assert res.code == 2
    line = one_line(res.err)
    assert str(tar) in line and "expected 1999639040" in line
    assert list(home.iterdir()) == []


def test_prepare_voc_from_verified_tar(cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tar = fx.build_voc_tar(tmp_path)
    monkeypatch.setenv("SPMLBENCH_MANIFESTS", str(voc_manifest_for(tmp_path, tar)))
    res = cli("prepare", "voc", "--from", str(tar), "--features", "none")
    assert res.code == 0, res.err
    check_voc_labels(home)
    assert os.readlink(home / "voc" / "images") == "raw/VOCdevkit/VOC2012"
    meta = load_labels("voc").attrs["spmlbench"]
    assert meta["sources"][VOC_TAR] == hashlib.sha256(tar.read_bytes()).hexdigest()
    assert tar.is_file()  # the user's archive is never deleted
    # re-prepare without --from reuses raw/ (nothing to download)
    res = cli("prepare", "voc", "--features", "none", "--label-seed", "9")
    assert res.code == 0, res.err
    check_voc_labels(home, label_seed=9)


def test_prepare_download_asks_for_terms(cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, http_server) -> None:
    tar = fx.build_voc_tar(tmp_path)
    url = http_server.add("/voc/" + VOC_TAR, tar.read_bytes())
    monkeypatch.setenv("SPMLBENCH_MANIFESTS", str(voc_manifest_for(tmp_path, tar, urls=[url])))
    res = cli("prepare", "voc", "--features", "none")  # no --yes, no stdin
    assert res.code == 2
    assert "Flickr" in res.out  # the terms were shown
    assert "--yes" in res.err and "not accepted" in res.err
    assert list(home.iterdir()) == []
    assert http_server.requests_for("/voc/" + VOC_TAR) == []
    res = cli("prepare", "voc", "--features", "none", "--yes")
    assert res.code == 0, res.err
    check_voc_labels(home)
    assert not (home / "downloads" / "voc" / VOC_TAR).exists()  # extracted, then removed


def test_prepare_nuswide_missing_image(cli, home: Path, tmp_path: Path) -> None:
    root = fx.build_nuswide(tmp_path / "nus", missing=("beach/0003_2.jpg",))
    res = cli("prepare", "nuswide", "--from", str(root), "--features", "none")
    assert res.code == 2
    line = one_line(res.err)
    assert "1 of 6 nuswide images are missing" in line and "beach/0003_2.jpg" in line
    assert list(home.iterdir()) == []


def test_prepare_nuswide_drop_unlabeled(cli, home: Path, tmp_path: Path) -> None:
    root = fx.build_nuswide(tmp_path / "nus")
    res = cli("prepare", "nuswide", "--from", str(root / "Flickr"), "--features", "none", "--drop-unlabeled")
    assert res.code == 0, res.err
    df = load_labels("nuswide")
    meta = df.attrs["spmlbench"]
    assert meta["protocol"]["deviations"] == ["drop-unlabeled"]
    assert meta["unlabeled_rows"] == {"train": 1, "test": 1}
    assert meta["dropped_unlabeled"] == {"train": 1, "test": 1}
    assert df["image"].tolist() == ["actor/0001_2124494179.jpg", "beach/0003_2.jpg", "sky/0004_3.jpg", "water/0006_5.jpg"]
    assert (home / "nuswide" / "images").resolve() == (root / "Flickr").resolve()
    # re-prepare without --from finds the user's Flickr/ and the formatted files beside it again
    res = cli("prepare", "nuswide", "--features", "none")
    assert res.code == 0, res.err
    assert len(load_labels("nuswide")) == 6


def test_prepare_coco_from_folder_of_zips(cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zips = fx.build_coco_zips(tmp_path / "dl")
    files = "".join(
        f'[[files]]\nname = "{name}"\nurls = []\nsize = {path.stat().st_size}\n'
        f'sha256 = "{hashlib.sha256(path.read_bytes()).hexdigest()}"\n\n'
        for name, path in zips.items()
    )
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "coco.toml").write_text(
        'name = "coco"\ntitle = "COCO fixture"\nclass_names = ["person", "bicycle", "car", "airplane"]\n'
        "[expected_counts]\nofficial_train = 4\nofficial_val = 2\n\n" + files
    )
    monkeypatch.setenv("SPMLBENCH_MANIFESTS", str(folder))
    res = cli("prepare", "coco", "--from", str(tmp_path / "dl"), "--features", "none")
    assert res.code == 0, res.err
    assert "MISMATCH" not in res.err
    df = load_labels("coco")
    assert df["image"].tolist()[:2] == ["train2014/COCO_train2014_000000000010.jpg", "train2014/COCO_train2014_000000000100.jpg"]
    assert df.attrs["spmlbench"]["count_mismatches"] == []
    assert set(df.attrs["spmlbench"]["sources"]) >= set(zips)
    assert all((image_root("coco") / p).is_file() for p in df["image"])


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("prepare", "nosuch"), "unknown dataset 'nosuch'"),
        (("prepare", "voc", "--from", "/no/such/path"), "/no/such/path: no such file or folder"),
        (("prepare", "digits", "--features", "bogus"), "--features 'bogus'"),
        (("prepare", "nuswide", "--features", "none"), "never downloaded"),
        (("prepare", "digits", "--from", "/tmp", "--features", "none"), "takes no source"),
    ],
)
def test_prepare_errors_are_one_line(cli, home: Path, args: tuple[str, ...], needle: str) -> None:
    res = cli(*args)
    assert res.code == 2
    assert needle in one_line(res.err)
    assert list(home.iterdir()) == []


# --- End-to-end bit-exactness: the real `prepare --from` path against docs/protocol.md sections 3-4 ----
#
# The two functions below are a direct transcription of docs/protocol.md sections 3 and 4, written
# here on purpose (not imported from spmlbench nor from test_protocol) so the comparison is
# independent of both. The raw trees are random and large enough that every protocol step
# (file-name sort, drop, full-file sampling before the split, negative shuffle) changes the result.


def spec_section_4(y: np.ndarray, seed: int = 1200) -> np.ndarray:
    """docs/protocol.md section 4, line by line."""
    rng = np.random.RandomState(seed)  # fresh generator for each file
    s = np.zeros(y.shape, dtype=np.int8)
    for i in range(y.shape[0]):  # each row, in file order
        pos = np.where(y[i] == 1)[0]
        rng.shuffle(pos)
        s[i, pos[:1]] = 1
        neg = np.where(y[i] == 0)[0]
        rng.shuffle(neg)  # nothing kept, but it consumes draws
    return s


def spec_section_3(n: int) -> tuple[list[int], list[int]]:
    """docs/protocol.md section 3, line by line."""
    n_2 = int(round(0.2 * n))
    n_1 = n - n_2
    perm = np.random.RandomState(1200).permutation(n)
    return sorted(perm[:n_1].tolist()), sorted(perm[-n_2:].tolist())


def random_voc_tree(root: Path, rng: np.random.RandomState) -> dict[str, list]:
    """A VOCdevkit with random ids/values; returns the expected image order and clean rows per file."""
    main = root / "VOCdevkit" / "VOC2012" / "ImageSets" / "Main"
    main.mkdir(parents=True)
    expected: dict[str, list] = {}
    for split, n in (("train", 140), ("val", 45)):
        ids = [f"{2007 + rng.randint(6)}_{rng.randint(10**6):06d}" for _ in range(n)]
        ids += [ids[k] + "-1" for k in range(0, 12, 3)]  # '-' sorts before '.' in "<id>.jpg"
        ids = list(dict.fromkeys(ids))
        values = {i: rng.choice([-1, -1, -1, -1, 0, 1], size=len(fx.VOC_CLASSES)) for i in ids}
        for i in ids[5:25]:  # no positive (some with difficult 0s): dropped
            values[i][values[i] == 1] = rng.choice([-1, 0])
        order = rng.permutation(len(ids))  # the class files list ids in no particular order
        for c, cls in enumerate(fx.VOC_CLASSES):
            text = "".join(f"{ids[k]} {values[ids[k]][c]:>2d}\n" for k in order)
            (main / f"{cls}_{split}.txt").write_text(text, encoding="utf-8")
        kept = sorted((i for i in ids if (values[i] == 1).any()), key=lambda i: i + ".jpg")
        expected[split] = [(f"JPEGImages/{i}.jpg", (values[i] == 1).astype(np.int8)) for i in kept]
        for n_img, i in enumerate(ids):
            fx.write_jpeg(root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{i}.jpg", seed=n_img)
    return expected


def check_against_spec(df, train_rows: list, test_rows: list, label_seed: int) -> None:
    """labels.parquet == docs/protocol.md applied by hand to the expected formatted files."""
    n = len(train_rows)
    y_train = np.array([r for _, r in train_rows], dtype=np.int8)
    y_test = np.array([r for _, r in test_rows], dtype=np.int8)
    assert df["image"].tolist() == [p for p, _ in train_rows] + [p for p, _ in test_rows]
    np.testing.assert_array_equal(label_matrix(df), np.concatenate([y_train, y_test]))
    train_idx, val_idx = spec_section_3(n)
    splits = df["split"].tolist()
    assert [i for i in range(n) if splits[i] == "train"] == train_idx
    assert [i for i in range(n) if splits[i] == "val"] == val_idx
    assert splits[n:] == ["test"] * len(test_rows)
    obs = label_matrix(df, "observed")
    expected_obs = spec_section_4(y_train, label_seed)  # on the full official train file
    np.testing.assert_array_equal(obs[:n], expected_obs)
    np.testing.assert_array_equal(obs[n:], y_test)  # test rows: clean labels
    # the comparison has power: sampling per split instead, or skipping the negative shuffle, differs
    assert not np.array_equal(spec_section_4(y_train[train_idx], label_seed), expected_obs[train_idx])
    meta = df.attrs["spmlbench"]
    assert meta["counts"] == {"train": len(train_idx), "val": len(val_idx), "test": len(test_rows)}
    assert meta["protocol"]["label_seed"] == label_seed
    assert meta["expected_positives"]["computed"] == pytest.approx(y_train[train_idx].sum(1).mean())


@pytest.mark.parametrize("label_seed", [1200, 31])
def test_prepare_voc_from_folder_is_bit_exact_to_the_spec(cli, home: Path, tmp_path: Path, label_seed: int) -> None:
    expected = random_voc_tree(tmp_path / "user", np.random.RandomState(4))
    assert len(expected["train"]) > 100
    res = cli("prepare", "voc", "--from", str(tmp_path / "user" / "VOCdevkit"), "--features", "none",
              "--label-seed", str(label_seed))
    assert res.code == 0, res.err
    check_against_spec(load_labels("voc"), expected["train"], expected["val"], label_seed)


def test_prepare_nuswide_keeps_label_less_rows_bit_exact(cli, home: Path, tmp_path: Path) -> None:
    rng = np.random.RandomState(8)
    root = tmp_path / "nus"
    root.mkdir()
    files = {}
    for split, n in (("train", 120), ("val", 30)):
        y = (rng.rand(n, 81) < 0.03).astype(np.float32)
        y[rng.rand(n) < 0.25] = 0  # label-less rows (about 22% in the real files): kept, observe nothing
        images = [f"c{k % 7}/{k:04d}_{split}.jpg" for k in range(n)]
        np.save(root / f"formatted_{split}_labels.npy", y)
        np.save(root / f"formatted_{split}_images.npy", np.array(images))
        for k, rel in enumerate(images):
            fx.write_jpeg(root / "Flickr" / rel, seed=k)
        files[split] = [(p, r.astype(np.int8)) for p, r in zip(images, y)]
    unlabeled = sum(int(not r.any()) for _, r in files["train"])
    assert unlabeled > 10
    res = cli("prepare", "nuswide", "--from", str(root), "--features", "none")
    assert res.code == 0, res.err
    df = load_labels("nuswide")
    check_against_spec(df, files["train"], files["val"], 1200)
    assert df.attrs["spmlbench"]["unlabeled_rows"]["train"] == unlabeled
    assert df.attrs["spmlbench"]["protocol"]["deviations"] == []


def test_prepare_cub_with_undecodable_file_fails_cleanly(cli, home: Path, tmp_path: Path) -> None:
    root = fx.build_cub(tmp_path / "cub")
    f = root / "CUB_200_2011" / "images.txt"
    f.write_bytes(f.read_bytes() + b"\xff 9 x.jpg\n")
    res = cli("prepare", "cub", "--from", str(root), "--features", "none")
    assert res.code == 2
    line = one_line(res.err)
    assert str(f) in line and "not a UTF-8 text file" in line and "re-extract CUB_200_2011.tgz" in line
    assert list(home.iterdir()) == []
