"""Pinning a manifest's Zenodo files from a record API served on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import shutil
import tomllib
from pathlib import Path

import pytest

from spmlbench.data.download import fetch
from spmlbench.data.manifest import load_manifest, manifests_dir
from spmlbench.errors import DataError

try:
    from tests.http_server import LoopbackServer, http_server  # noqa: F401
except ImportError:  # pragma: no cover - pytest without the repo root on sys.path
    from http_server import LoopbackServer, http_server  # type: ignore[no-redef]  # noqa: F401

NAMES = ["formatted_train_images.npy", "formatted_train_labels.npy",
         "formatted_val_images.npy", "formatted_val_labels.npy"]


def _record(contents: dict[str, bytes], extra: tuple[str, ...] = ()) -> bytes:
    files = [{"key": k, "size": len(v), "checksum": "md5:" + hashlib.md5(v).hexdigest(),
              "links": {"self": f"https://zenodo.org/api/records/10162606/files/{k}/content"}}
             for k, v in contents.items()]
    files += [{"key": k, "size": 1, "checksum": "md5:" + "0" * 32} for k in extra]
    return json.dumps({"id": 10162606, "files": files}).encode()


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    """A copy of the shipped manifests (the repo's own files are never rewritten by tests)."""
    dst = tmp_path / "manifests"
    shutil.copytree(manifests_dir(None), dst)
    return dst


def test_pin_writes_size_and_md5_and_keeps_the_rest(cli, manifests: Path, http_server: LoopbackServer) -> None:
    contents = {n: f"payload of {n}".encode() * (i + 1) for i, n in enumerate(NAMES)}
    api = http_server.add("/api/records/10162606", _record(contents, extra=("train_features_imagenet_resnet50.npy",)))
    before = load_manifest("nuswide", manifests)
    assert all(f.md5 is None and f.size is None for f in before.files)

    res = cli("pin-zenodo", "nuswide", "--api", api, "--manifest-dir", str(manifests))
    assert res.code == 0, res.err
    assert "pinned 4 file(s)" in res.out

    after = load_manifest("nuswide", manifests)
    for spec in after.files:
        assert spec.size == len(contents[spec.name])
        assert spec.md5 == hashlib.md5(contents[spec.name]).hexdigest()
        assert spec.urls == before.file(spec.name).urls
    assert after.class_names == before.class_names and after.expected_counts == before.expected_counts
    text = (manifests / "nuswide.toml").read_text()
    assert "# class_names: Concepts81.txt order exactly" in text  # comments survive
    # pinning twice gives the same file (no duplicated keys)
    assert cli("pin-zenodo", "nuswide", "--api", api, "--manifest-dir", str(manifests)).code == 0
    assert (manifests / "nuswide.toml").read_text() == text
    tomllib.loads(text)


def test_pinned_manifest_makes_downloads_verified(manifests: Path, http_server: LoopbackServer, tmp_path: Path) -> None:
    from spmlbench.data.zenodo_pin import pin_manifest

    good = {n: n.encode() * 10 for n in NAMES}
    pin_manifest("nuswide", api_url=http_server.add("/rec", _record(good)), manifest_dir=manifests)
    spec = load_manifest("nuswide", manifests).file(NAMES[1])
    bad_url = http_server.add("/bad/" + NAMES[1], b"x" * len(good[NAMES[1]]))  # right size, wrong bytes
    good_url = http_server.add("/good/" + NAMES[1], good[NAMES[1]])
    import dataclasses

    out = fetch(dataclasses.replace(spec, urls=(bad_url, good_url)), tmp_path / "dl", progress=False)
    assert out.read_bytes() == good[NAMES[1]]
    assert not (tmp_path / "dl" / (NAMES[1] + ".part")).exists()


def test_record_without_a_listed_file_is_refused(cli, manifests: Path, http_server: LoopbackServer) -> None:
    original = (manifests / "nuswide.toml").read_text()
    api = http_server.add("/rec", _record({n: b"x" for n in NAMES[:3]}))
    res = cli("pin-zenodo", "nuswide", "--api", api, "--manifest-dir", str(manifests))
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and NAMES[3] in lines[0] and "nuswide.toml" in lines[0]
    assert (manifests / "nuswide.toml").read_text() == original


def test_unreachable_api_is_one_line_error(manifests: Path, http_server: LoopbackServer) -> None:
    from spmlbench.data.zenodo_pin import pin_manifest

    with pytest.raises(DataError, match="could not read the Zenodo record"):
        pin_manifest("nuswide", api_url=http_server.dead_url("/rec"), manifest_dir=manifests)
    with pytest.raises(DataError, match="has no name or md5 checksum"):
        pin_manifest("nuswide", api_url=http_server.add("/r", json.dumps({"files": [{"key": "a"}]}).encode()),
                     manifest_dir=manifests)
