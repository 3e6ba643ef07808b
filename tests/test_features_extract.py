"""Feature extraction: transform fidelity, metadata, resume, out-of-order workers, stale/corrupt caches, weights errors."""

from __future__ import annotations

import datetime as dt
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision import transforms

from spmlbench.errors import DataError
from spmlbench.features import backbones
from spmlbench.features.backbones import BackboneSpec, get_backbone
from spmlbench.features.extract import extract_features
from spmlbench.features.partial import PartialExtraction
from spmlbench.features.store import load_features, read_features
from spmlbench.paths import features_path
from spmlbench.progress import Note, TaskAdvance, TaskStart
from test_features_util import GRAYS, make_dataset

SMALL = dict(weights="none", image_size=16, progress=False, device="cpu")


def _reference_transform(size: int) -> transforms.Compose:
    """The papers' test transform (docs/protocol.md, section 5) built from torchvision."""
    return transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )


def test_preprocessing_equals_torchvision_transform_bitwise(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    path = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).save(path)
    spec = get_backbone("resnet50")
    ours = spec.prepare(torch.from_numpy(spec.load_image(path, 24))[None])[0]
    with Image.open(path) as img:
        ref = _reference_transform(24)(img.convert("RGB"))
    assert torch.equal(ours.contiguous(), ref)


def test_resnet_features_match_an_independent_pipeline(home: Path) -> None:
    images = make_dataset(home, n=5)
    path = extract_features("tiny", "resnet18", batch_size=4, workers=0, **SMALL)
    ours, meta = read_features(path)
    model = get_backbone("resnet18").build("none")
    tf = _reference_transform(16)
    batch = []
    for name in images:
        with Image.open(home / "tiny" / "images" / name) as img:
            batch.append(tf(img.convert("RGB")))
    with torch.no_grad():
        ref = model(torch.stack(batch)).numpy()
    assert ours.shape == (5, 512)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    # the random init is built with the real torchvision architecture, classifier removed
    assert isinstance(model, torchvision.models.ResNet) and isinstance(model.fc, torch.nn.Identity)
    # metadata present
    assert meta["backbone"] == "resnet18"
    assert meta["weights"] == "none"
    assert meta["image_size"] == 16 and "Resize((16, 16))" in meta["transform"]
    assert meta["dtype"] == "float32" and meta["precision"] == "fp32" and meta["device"] == "cpu"
    assert meta["torch"] == torch.__version__ and meta["torchvision"] == torchvision.__version__
    assert meta["rows"] == 5 and meta["dim"] == 512 and len(meta["sha256"]) == 64
    assert dt.datetime.fromisoformat(meta["date"]).tzinfo is not None


def test_pixels_backbone_values_and_alignment_with_out_of_order_workers(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Solid gray images: pixel features are exactly gray/255, so any row swap is visible."""
    images = make_dataset(home, n=10, gray=True)
    original = BackboneSpec.load_image

    def slow_first_rows(self, path, image_size=None):  # runs in the forked workers
        if Path(path).name in ("g00.png", "sub/g01.png", "g01.png"):
            time.sleep(0.6)
        return original(self, path, image_size)

    monkeypatch.setattr(BackboneSpec, "load_image", slow_first_rows)
    order: list[int] = []
    write = PartialExtraction.write_chunk

    def record(self, start, stop, feats):
        order.append(start)
        return write(self, start, stop, feats)

    monkeypatch.setattr(PartialExtraction, "write_chunk", record)
    path = extract_features("tiny", "pixels", batch_size=2, workers=2, chunk_rows=2, progress=False)
    assert order != sorted(order), "the slow first batch should have arrived last"
    feats = load_features("tiny", "pixels")
    assert feats.shape == (10, 32 * 32)
    expected = np.float32(np.array(GRAYS[:10], dtype=np.float32) / np.float32(255))
    np.testing.assert_array_equal(feats, np.repeat(expected[:, None], 1024, axis=1))
    assert path == features_path("tiny", "pixels")
    import pyarrow.parquet as pq

    assert pq.read_table(path, columns=["image"]).column("image").to_pylist() == images


class Interrupted(Exception):
    pass


def test_interrupted_extraction_resumes_to_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    full_home, cut_home = tmp_path / "a", tmp_path / "b"
    make_dataset(full_home, n=7)
    make_dataset(cut_home, n=7)
    kw = dict(home=None, batch_size=2, workers=0, chunk_rows=4, **SMALL)
    reference = extract_features("tiny", "resnet18", **{**kw, "home": full_home})

    write = PartialExtraction.write_chunk
    calls = {"n": 0}

    def fail_after_first(self, start, stop, feats):
        if calls["n"] == 1:
            raise Interrupted
        calls["n"] += 1
        return write(self, start, stop, feats)

    monkeypatch.setattr(PartialExtraction, "write_chunk", fail_after_first)
    with pytest.raises(Interrupted):
        extract_features("tiny", "resnet18", **{**kw, "home": cut_home})
    target = features_path("tiny", "resnet18", cut_home)
    assert not target.exists()
    assert sorted(p.name for p in (target.parent / ".resnet18.partial").glob("rows_*")) == ["rows_0000000000_0000000004.npy"]

    monkeypatch.setattr(PartialExtraction, "write_chunk", write)
    loaded: list[str] = []
    original = BackboneSpec.load_image
    monkeypatch.setattr(BackboneSpec, "load_image", lambda s, p, n=None: (loaded.append(Path(p).name), original(s, p, n))[1])
    resumed = extract_features("tiny", "resnet18", **{**kw, "home": cut_home})
    assert len(loaded) == 3  # rows 4..6 only
    a, meta_a = read_features(reference)
    b, meta_b = read_features(resumed)
    assert a.tobytes() == b.tobytes() and meta_a["sha256"] == meta_b["sha256"]
    assert not (target.parent / ".resnet18.partial").exists()


def test_partial_chunks_of_another_setting_are_discarded(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dataset(home, n=6, gray=True)
    write = PartialExtraction.write_chunk

    def fail(self, start, stop, feats):
        write(self, start, stop, feats)
        raise Interrupted

    monkeypatch.setattr(PartialExtraction, "write_chunk", fail)
    kw = dict(batch_size=2, chunk_rows=2, progress=False)
    with pytest.raises(Interrupted):
        extract_features("tiny", "pixels", image_size=8, **kw)
    assert len(list(features_path("tiny", "pixels").parent.glob(".pixels.partial/rows_*"))) == 1
    monkeypatch.setattr(PartialExtraction, "write_chunk", write)
    feats, meta = read_features(extract_features("tiny", "pixels", image_size=10, **kw))
    assert meta["image_size"] == 10 and feats.shape == (6, 100)  # no 8x8 chunk mixed in
    expected = np.array(GRAYS[:6], dtype=np.float32) / np.float32(255)
    np.testing.assert_array_equal(feats, np.repeat(expected[:, None], 100, axis=1))


def test_existing_valid_cache_is_reused(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_dataset(home, n=4)
    events: list[object] = []
    path = extract_features("tiny", "pixels", progress=events.append, batch_size=3)
    starts = [e for e in events if isinstance(e, TaskStart)]
    assert [(s.description, s.total, s.unit) for s in starts] == [("tiny/pixels", 4, "images")]
    assert [e.amount for e in events if isinstance(e, TaskAdvance)] == [3, 1]
    assert [e.text for e in events if isinstance(e, Note)] == [f"{path}: wrote 4 x 1024 features"]
    stamp = path.stat().st_mtime_ns
    monkeypatch.setattr(BackboneSpec, "build", lambda *a, **k: pytest.fail("must not recompute"))
    events.clear()
    assert extract_features("tiny", "pixels", progress=events.append) == path
    assert events == [Note(f"{path}: up to date (4 rows)")]
    assert path.stat().st_mtime_ns == stamp


def _flip_feature_bytes(path: Path) -> None:
    """Flip bytes in the middle of the features column chunk (the compressed float data)."""
    import pyarrow.parquet as pq

    col = pq.ParquetFile(path).metadata.row_group(0).column(1)
    data = bytearray(path.read_bytes())
    mid = col.data_page_offset + col.total_compressed_size // 2
    for k in range(mid - 4, mid + 4):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))


def test_corrupt_cache_is_refused_then_rebuilt(home: Path) -> None:
    make_dataset(home, n=6, gray=True)
    path = extract_features("tiny", "pixels", progress=False)
    good = read_features(path)[0].copy()
    _flip_feature_bytes(path)
    with pytest.raises(DataError, match=r"spmlbench features tiny --backbone pixels"):
        load_features("tiny", "pixels")
    extract_features("tiny", "pixels", progress=False)  # stale -> rebuilt
    np.testing.assert_array_equal(load_features("tiny", "pixels"), good)


def test_mismatched_cache_is_refused_then_rebuilt(home: Path) -> None:
    make_dataset(home, n=6, gray=True)
    extract_features("tiny", "pixels", progress=False)
    make_dataset(home, n=8, gray=True)  # dataset re-prepared with more rows
    with pytest.raises(DataError, match="6 rows but labels.parquet has 8"):
        load_features("tiny", "pixels")
    extract_features("tiny", "pixels", progress=False)
    assert load_features("tiny", "pixels").shape == (8, 1024)


def test_missing_weights_error_says_where_to_put_the_file(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dataset(home, n=2)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def offline(url, dst, *a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(DataError) as err:
        extract_features("tiny", "resnet18", home=home, image_size=32, progress=False, device="cpu")
    msg = str(err.value)
    expected = tmp_path / "torch_home" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert msg.startswith(f"{expected}: ResNet18_Weights.IMAGENET1K_V1")
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "--weights none" in msg and "\n" not in msg
    assert backbones.weights_cache_path(get_backbone("resnet18")) == expected
    assert not features_path("tiny", "resnet18", home).exists()


def test_unreadable_image_is_named(home: Path) -> None:
    images = make_dataset(home, n=3)
    (home / "tiny" / "images" / images[1]).write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{images[1]}: cannot decode image"):
        extract_features("tiny", "pixels", progress=False)
    Image.new("RGB", (5, 5)).save(home / "tiny" / "images" / images[1])
    (home / "tiny" / "images" / images[2]).unlink()
    with pytest.raises(DataError, match="image missing"):
        extract_features("tiny", "pixels", progress=False, batch_size=1, chunk_rows=1)


def test_default_backbone_of_digits_is_offline_pixels() -> None:
    from spmlbench.features.extract import default_backbone

    assert default_backbone("digits") == "pixels"
    spec = get_backbone("pixels")
    assert spec.weights == "none" and not spec.needs_weights and spec.dim == 1024


def test_bf16_channels_last_forward_is_close_to_fp32() -> None:
    """The fast path's arithmetic (channels_last view, bf16 autocast) checked on the CPU."""
    from spmlbench.features.extract import make_forward

    spec = get_backbone("resnet18")
    model = spec.build("none")
    batch = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    exact = make_forward(spec, model, torch.device("cpu"), fast=False)(batch)()
    fast = make_forward(spec, model, torch.device("cpu"), fast=True)(batch)()
    assert fast.dtype == np.float32 and fast.shape == exact.shape == (3, 512)
    rel = np.linalg.norm(fast - exact) / np.linalg.norm(exact)
    assert 0 < rel < 0.05


@pytest.mark.gpu
def test_cuda_bf16_path_is_close_to_fp32(home: Path) -> None:
    make_dataset(home, n=12)
    kw = dict(weights="none", image_size=64, progress=False, device="cuda", batch_size=4, workers=2)
    fast, meta_fast = read_features(extract_features("tiny", "resnet18", **kw))
    exact, meta_exact = read_features(extract_features("tiny", "resnet18", exact=True, force=True, **kw))
    assert meta_fast["precision"] == "bf16-autocast+channels_last" and meta_exact["precision"] == "fp32"
    assert meta_fast["device"].startswith("cuda")
    cpu, _ = read_features(extract_features("tiny", "resnet18", force=True, **{**kw, "device": "cpu"}))
    np.testing.assert_allclose(exact, cpu, rtol=1e-3, atol=1e-4)
    rel = np.linalg.norm(fast - exact) / np.linalg.norm(exact)
    assert 0 < rel < 0.05
