"""Cached layer4 feature maps (float16) for heads that need the map, not the pooled vector (BoostLU's frozen
variant): ``<home>/<ds>/features/<backbone>-maps.npy``, a memory-mapped ``(N, D, h, w)`` array in the rows of
labels.parquet, with ``<backbone>-maps.json`` (backbone, weights, image size, shape, images, sha256).

Size per image: ``D h w x 2`` bytes: ResNet-50 at 448 px 2048 x 14 x 14 x 2 = 802,816 bytes (0.8 MB; VOC's
11,540 images 9.3 GB), ResNet-18 at 32 px 512 x 1 x 1 x 2 = 1 KB. Resumable: rows are written into
``.partial`` files with the count of finished rows beside them; a rerun continues after the last finished batch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spmlbench.atomic import atomic_write_text
from spmlbench.data.acquire import sha256_file
from spmlbench.errors import DataError
from spmlbench.features.backbones import feature_map, get_backbone
from spmlbench.paths import dataset_dir
from spmlbench.progress import Reporter, Sink

FORMAT = 1
FULL_HASH_BYTES = 1 << 30  # hashed whole on every load up to 1 GiB (about 1 s); sampled above
SAMPLES, SAMPLE_BYTES = 64, 1 << 16


def maps_path(dataset: str, backbone: str, home: Any = None) -> Path:
    """``<home>/<ds>/features/<backbone>-maps.npy`` (its metadata: the ``.json`` beside it)."""
    return dataset_dir(dataset, home) / "features" / f"{backbone}-maps.npy"


def extract_maps(dataset: str, backbone: str, *, home: Any = None, device: str | torch.device = "cpu",
                 weights: str = "default", image_size: int | None = None, batch_size: int = 16,
                 progress: Sink | None = None, force: bool = False, verify: bool = False) -> Path:
    """Write (or resume, or reuse) the layer4 maps of every labels.parquet row. An existing cache is reused
    only when it passes :func:`maps_problem` (``verify``: the full sha256 whatever its size); ``force``
    rebuilds it."""
    from spmlbench.data.registry import image_root
    from spmlbench.data.store import load_labels
    from spmlbench.features.extract import make_forward

    spec = get_backbone(backbone)
    size = int(image_size or spec.image_size)
    images = load_labels(dataset, home)["image"].astype(str).tolist()
    path, meta_path = maps_path(dataset, backbone, home), maps_path(dataset, backbone, home).with_suffix(".json")
    dev = torch.device(device)
    net = feature_map(spec.build(weights)).eval()
    with torch.no_grad():
        probe = net(torch.zeros(1, 3, size, size))
    shape = (len(images), *probe.shape[1:])
    want = {"format": FORMAT, "backbone": backbone, "weights": spec.weights_label(weights), "image_size": size,
            "shape": list(shape), "dtype": "float16", "images": images}
    report = Reporter(progress)
    if path.exists() and meta_path.exists() and not force:
        problem = maps_problem(path, full=verify)
        have = _read_meta(meta_path) if problem is None else {}
        if problem is None and {k: have.get(k) for k in want} == want:
            report.note(f"{path}: up to date, reused")
            return path
        if problem is not None:
            report.note(f"{path}: {problem}; rebuilding it")
    partial, done_file = path.with_suffix(".npy.partial"), path.with_suffix(".done.partial")
    fingerprint = json.dumps(want, sort_keys=True)
    done = 0
    if partial.exists() and done_file.exists():
        state = json.loads(done_file.read_text())
        if state.get("fingerprint") == fingerprint:
            done = int(state["rows"])
    path.parent.mkdir(parents=True, exist_ok=True)
    out = np.lib.format.open_memmap(partial, mode="r+" if done else "w+", dtype=np.float16, shape=shape)
    submit = make_forward(spec, net, dev, fast=False)
    root = image_root(dataset, home)
    with report.task(f"{dataset}: {backbone} layer4 maps", len(images), unit="images", completed=done) as advance:
        for lo in range(done, len(images), batch_size):
            rows = images[lo:lo + batch_size]
            batch = torch.from_numpy(np.stack([spec.load_image(root / r, size) for r in rows]))
            out[lo:lo + len(rows)] = submit(batch)().astype(np.float16)
            out.flush()
            atomic_write_text(done_file, json.dumps({"fingerprint": fingerprint, "rows": lo + len(rows)}))
            advance(len(rows))
    del out
    os.replace(partial, path)
    write_maps_metadata(path, want)
    done_file.unlink(missing_ok=True)
    return path


def write_maps_metadata(path: Path, want: dict[str, Any]) -> Path:
    """Write the ``.json`` of the finished maps ``path``: ``want`` (the settings, shape and images) with the
    file's size, whole and sampled sha256 (checked by :func:`maps_problem`)."""
    shape = want["shape"]
    meta_path = path.with_suffix(".json")
    atomic_write_text(meta_path, json.dumps({**want, "sha256": sha256_file(path), "bytes": path.stat().st_size,
                                             "sample_sha256": sample_sha256(path),
                                             "bytes_per_image": int(np.prod(shape[1:])) * 2}, sort_keys=True))
    return meta_path


def sample_sha256(path: Path) -> str:
    """sha256 of ``SAMPLES`` blocks of ``SAMPLE_BYTES`` spread evenly over the file (its first and last
    included): the cheap check of a cache too large to hash whole on every load."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for k in range(SAMPLES):
            fh.seek(max(0, size - SAMPLE_BYTES) * k // (SAMPLES - 1))
            digest.update(fh.read(SAMPLE_BYTES))
    return digest.hexdigest()


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """The maps' ``.json`` as a dict ({} when it is not a JSON object: :func:`maps_problem` says why)."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return {}
    return meta if isinstance(meta, dict) else {}


def maps_problem(path: Path, *, full: bool = False) -> str | None:
    """Why the maps cache ``path`` (with its ``.json``) cannot be used, or None. The metadata must be a JSON
    object, the ``.npy`` header readable with the stored shape and dtype, the file of the stored size, and its
    bytes those hashed at write time: the whole file when ``full`` or up to ``FULL_HASH_BYTES``, else
    ``SAMPLES`` blocks spread over it (:func:`sample_sha256`)."""
    meta_path = path.with_suffix(".json")
    if not path.exists() or not meta_path.exists():
        return "layer4 map cache missing"
    meta = _read_meta(meta_path)
    if not {"shape", "sha256"} <= set(meta):
        return f"its metadata {meta_path.name} is not a maps description (truncated or not JSON)"
    try:
        maps = np.load(path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        return f"not a readable .npy file ({type(exc).__name__}: {' '.join(str(exc).split())[:80]})"
    if list(maps.shape) != meta["shape"] or maps.dtype != np.float16:
        return f"shape {maps.shape} / {maps.dtype} differ from its metadata"
    size = path.stat().st_size
    if meta.get("bytes") not in (None, size):
        return f"holds {size} bytes, its metadata says {meta['bytes']} (truncated or overwritten)"
    if full or size <= FULL_HASH_BYTES or "sample_sha256" not in meta:
        if sha256_file(path) != meta["sha256"]:
            return "bytes do not match the sha256 in its metadata (corrupt or overwritten)"
        bad = sum(int(np.count_nonzero(~np.isfinite(maps[i:i + 256]))) for i in range(0, len(maps), 256))
        if bad:
            return f"holds {bad} NaN or infinite values"
    elif sample_sha256(path) != meta["sample_sha256"]:
        return "bytes do not match the sampled sha256 in its metadata (corrupt or overwritten)"
    return None


def load_maps(dataset: str, backbone: str, home: Any = None, *, verify: bool = False) -> np.ndarray:
    """The maps as a read-only memory map ``(N, D, h, w)`` float16, checked by :func:`maps_problem`
    (``verify``: the full sha256) and against labels.parquet's rows (DataError naming the command that
    rebuilds them)."""
    from spmlbench.data.store import load_labels

    path = maps_path(dataset, backbone, home)
    meta = _read_meta(path.with_suffix(".json"))
    fix = f"rebuild it with 'spmlbench features {dataset} --backbone {backbone}{_settings_flags(backbone, meta)} --maps --force'"
    problem = maps_problem(path, full=verify)
    if problem is not None:
        raise DataError(f"{path}: {problem}; {fix}")
    if meta.get("images") != load_labels(dataset, home)["image"].astype(str).tolist():
        raise DataError(f"{path}: rows do not match labels.parquet (re-prepared?); {fix}")
    return np.load(path, mmap_mode="r")


def _settings_flags(backbone: str, meta: dict[str, Any]) -> str:
    """The ``features`` options that rebuild maps with the settings in ``meta`` (weights none, image size)."""
    flags = " --weights none" if meta.get("weights") == "none" else ""
    size = meta.get("image_size")
    return flags + (f" --image-size {size}" if size and size != get_backbone(backbone).image_size else "")
