"""The CLIP pseudo-label stage: image-class cosines of every training image, cached like features.

``<home>/<ds>/pseudo/<source>.parquet`` (:mod:`spmlbench.features.store` format) holds, per training row of
labels.parquet (in order), the cosines between the class text embeddings and the CLIP embeddings of each
view, plain and flipped: ``(2, V, C)`` flattened (``vlpl``: V = 1, the image; ``damp``: the global image and
its grid x grid tiles). Its metadata: source, model, pretrained tag, prompt template, class names, transform,
grid, GCN, versions, the text embeddings (float32, base64) and the sha256 of the values. A pseudo-label loss
applies its own rule (temperature, threshold, top-k, eta) to these values at training time, drawing each
epoch's flips under the job's seed, so no CLIP runs while training. Settings: spmlbench/data_manifests/pseudo_labels.toml.
"""

from __future__ import annotations

import base64
import json
import shutil
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from spmlbench.atomic import atomic_path
from spmlbench.data.acquire import sha256_file
from spmlbench.errors import ConfigError, DataError
from spmlbench.features.backbones import IMAGENET_MEAN, IMAGENET_STD
from spmlbench.features.clip import image_embeddings, load_clip, text_embeddings
from spmlbench.features.store import check_finite, read_features, read_metadata, write_features
from spmlbench.paths import dataset_dir, shipped
from spmlbench.progress import Reporter, Sink

SOURCES = ("vlpl", "damp")
FORMAT = 1
MANIFEST = shipped("pseudo_labels.toml")
PART_ROWS = 256
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
PROVENANCE_KEYS = ("source", "model", "pretrained", "template", "transform", "grid", "gcn", "class_names")


def pseudo_path(dataset: str, source: str, home: Any = None) -> Path:
    """``<home>/<ds>/pseudo/<source>.parquet``."""
    return dataset_dir(dataset, home) / "pseudo" / f"{source}.parquet"


def source_settings(source: str, dataset: str) -> dict[str, Any]:
    """The stage's settings for ``source`` on ``dataset`` (the per-dataset table wins)."""
    if source not in SOURCES:
        raise ConfigError(f"--source {source!r}: unknown; choose one of: {', '.join(SOURCES)}")
    table = tomllib.loads(MANIFEST.read_text(encoding="utf-8"))[source]
    out = {k: v for k, v in table.items() if not isinstance(v, dict)}
    out.update(table.get("datasets", {}).get(dataset, {}))
    return out


def tiles(width: int, height: int, grid: int) -> list[tuple[int, int, int, int]]:
    """``grid^2`` non-overlapping ``(left, top, right, bottom)`` boxes of ``width // grid x height // grid``
    pixels, row by row (the remainder at the right and bottom is left out, as in AEVLP's datasets.py)."""
    tw, th = width // grid, height // grid
    return [(j * tw, i * th, (j + 1) * tw, (i + 1) * th) for i in range(grid) for j in range(grid)]


def _tensor(img: Image.Image, size: int) -> torch.Tensor:
    arr = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    return (torch.from_numpy(arr).permute(2, 0, 1) - _MEAN) / _STD


def views(path: Path, source: str, size: int, grid: int) -> torch.Tensor:
    """``(2, V, 3, size, size)`` ImageNet-normalised views of one image, plain then flipped (as released:
    CLIP is fed ImageNet normalisation). ``vlpl``: the 448 squash resized to ``size``; ``damp``: the global
    image and its tiles, each resized to ``size``."""
    with Image.open(path) as im:
        img = im.convert("RGB")
    if source == "vlpl":
        x = _tensor(img, 448).unsqueeze(0)
        plain = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    else:
        parts = [img] + [img.crop(box) for box in tiles(img.width, img.height, grid)]
        plain = torch.stack([_tensor(p, size) for p in parts])
    return torch.stack([plain, plain.flip(-1)])


def damp_adjacency(relation: np.ndarray, sparse_topk: int) -> torch.Tensor:
    """AEVLP's GCN adjacency: keep the ``sparse_topk`` largest entries of each row, zero the diagonal,
    normalise each row to sum 0.2 and put 0.8 on the diagonal."""
    r = torch.as_tensor(relation, dtype=torch.float32).clone()
    keep = torch.zeros_like(r, dtype=torch.bool).scatter_(1, r.topk(min(sparse_topk, r.shape[1]), dim=1).indices, True)
    r = torch.where(keep, r, torch.zeros_like(r))
    r.fill_diagonal_(0)
    return 0.2 * r / r.sum(dim=1, keepdim=True).clamp_min(1e-12) + 0.8 * torch.eye(r.shape[0])


def gcn_text(t: torch.Tensor, relation: np.ndarray, sparse_topk: int, seed: int) -> torch.Tensor:
    """DAMP's ``t + GCN(t)`` (3 frozen random layers d -> 1024 -> 1024 -> d, LeakyReLU 0.2, weights drawn
    under ``seed``) over the adjacency of ``relation``: top ``sparse_topk`` per row, zero diagonal, rows
    normalised and x 0.2, diagonal 0.8; then L2-normalised."""
    adj = damp_adjacency(relation, sparse_topk)
    gen = torch.Generator().manual_seed(seed)
    h, dims = t, [t.shape[1], 1024, 1024, t.shape[1]]
    for i in range(3):
        bound = 1.0 / dims[i + 1] ** 0.5
        w = (torch.rand(dims[i], dims[i + 1], generator=gen) * 2 - 1) * bound
        h = adj @ (h @ w)
        if i < 2:
            h = torch.nn.functional.leaky_relu(h, 0.2)
    return torch.nn.functional.normalize(t + h, dim=-1)


def _train_rows(dataset: str, home: Any) -> tuple[list[str], list[str]]:
    from spmlbench.data.store import load_labels

    df = load_labels(dataset, home)
    names = list(df.attrs.get("spmlbench", {}).get("class_names", []))
    return df.loc[df["split"] == "train", "image"].astype(str).tolist(), names


def build_pseudo(dataset: str, source: str, *, home: Any = None, device: str | torch.device = "cpu",
                 model: str | None = None, pretrained: str | None = None, batch_size: int = 32,
                 force: bool = False, progress: Sink | None = None) -> Path:
    """Compute (or reuse) the ``source`` cache of ``dataset``; resumable: finished parts of an interrupted run
    are kept in ``pseudo/.<source>.parts/`` and reused. A cache built with other settings is refused unless
    ``force``."""
    from spmlbench.data.registry import image_root

    cfg = source_settings(source, dataset)
    cfg.update({k: v for k, v in (("model", model), ("pretrained", pretrained)) if v is not None})
    images, names = _train_rows(dataset, home)
    path = pseudo_path(dataset, source, home)
    root = image_root(dataset, home)
    dev = torch.device(device)
    relation = dataset_dir(dataset, home) / "pseudo" / "relation.npy"
    gcn = "off (no relation.npy)"
    if source == "damp" and relation.exists():
        gcn = f"seed {cfg['gcn_seed']}, sparse_topk {cfg['sparse_topk']}, relation.npy sha256 {sha256_file(relation)}"
    grid = int(cfg["grid"]) if source == "damp" else 0
    want = {"format": FORMAT, "source": source, "model": cfg["model"], "pretrained": cfg["pretrained"],
            "template": cfg["template"], "transform": cfg["transform"], "grid": grid, "gcn": gcn,
            "class_names": names}
    report = Reporter(progress)
    if path.exists():
        try:
            have = read_metadata(path)
        except DataError as exc:  # truncated or corrupt: rebuilt (it could not be rebuilt even with --force, before)
            report.note(f"{str(exc).split(';')[0]}; rebuilding it")
            have, force = {}, True
        same = {k: have.get(k) for k in want} == want and have.get("images") == len(images)
        if same and not force:
            report.note(f"{path}: up to date (same settings), reused")
            return path
        if not same and not force:
            diff = ", ".join(f"{k} {have.get(k)!r} (now {want[k]!r})" for k in PROVENANCE_KEYS
                             if have.get(k) != want.get(k)) or "other training rows"
            raise ConfigError(f"{path}: built with other settings ({diff}); pass --force to rebuild it")
    clip = load_clip(cfg["model"], cfg["pretrained"], dev)
    text = text_embeddings(clip, names, cfg["template"], dev).cpu()
    if gcn.startswith("seed"):
        text = gcn_text(text, np.load(relation), int(cfg["sparse_topk"]), int(cfg["gcn_seed"]))
    parts = path.parent / f".{source}.parts"
    fingerprint = json.dumps(want, sort_keys=True)
    settings = parts / "settings.json"
    if parts.exists() and (not settings.exists() or settings.read_text() != fingerprint):
        shutil.rmtree(parts)  # parts of a run with other settings
    parts.mkdir(parents=True, exist_ok=True)
    (parts / "settings.json").write_text(fingerprint)
    chunks = []
    with report.task(f"{dataset}: {source} pseudo-label scores", len(images), unit="images") as advance:
        for k, lo in enumerate(range(0, len(images), PART_ROWS)):
            part = parts / f"part-{k:05d}.npy"
            rows = images[lo:lo + PART_ROWS]
            if not part.exists():
                with atomic_path(part) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, _scores(clip, root, rows, source, grid, text, dev, batch_size))
            chunks.append(np.load(part))
            advance(len(rows))
    scores = np.concatenate(chunks) if chunks else np.zeros((0, 2 * (1 + grid * grid) * len(names)), np.float32)
    meta = {**want, "images": len(images), "views": 1 + grid * grid, "image_size": clip.image_size, "num_classes": len(names),
            "layout": "(rows, 2 plain/flipped, views, classes)", "method": cfg["method"],
            "text_embeddings": base64.b64encode(text.numpy().astype(np.float32).tobytes()).decode(),
            "text_dim": int(text.shape[1]), "versions": _versions()}
    write_features(path, images, scores, meta)
    shutil.rmtree(parts, ignore_errors=True)
    return path


def _scores(clip: Any, root: Path, rows: list[str], source: str, grid: int, text: torch.Tensor,
            dev: torch.device, batch_size: int) -> np.ndarray:
    """Cosines ``(rows, 2 * V * C)`` float32 of a list of images."""
    out = []
    for lo in range(0, len(rows), batch_size):
        x = torch.stack([views(root / r, source, clip.image_size, grid) for r in rows[lo:lo + batch_size]])
        b, f, v = x.shape[:3]
        e = image_embeddings(clip, x.flatten(0, 2).to(dev)).cpu()
        out.append((e @ text.t()).view(b, f * v * text.shape[0]))
    return torch.cat(out).numpy().astype(np.float32)


def _versions() -> dict[str, str]:
    import open_clip

    return {"torch": torch.__version__, "open_clip": getattr(open_clip, "__version__", "?")}


def load_pseudo(dataset: str, source: str, home: Any = None) -> torch.Tensor:
    """The ``source`` cache as ``(N_train, 2, V, C)`` float32, checked against labels.parquet's training rows
    (DataError naming the command that rebuilds it)."""
    path = pseudo_path(dataset, source, home)
    fix = f"run 'spmlbench pseudo-labels {dataset} --source {source}'"
    if not path.exists():
        raise DataError(f"{path}: pseudo-label cache missing; {fix}")
    values, meta = read_features(path)
    images, _ = _train_rows(dataset, home)
    if meta.get("format") != FORMAT or meta.get("source") != source:
        raise DataError(f"{path}: not a {source} pseudo-label cache of this version; {fix} --force")
    from spmlbench.features.store import read_images

    if read_images(path) != images:
        raise DataError(f"{path}: rows do not match labels.parquet's training rows (re-prepared?); {fix} --force")
    check_finite(path, values)  # NaN scores trained silently, before
    return torch.from_numpy(values).view(len(images), 2, int(meta["views"]), int(meta["num_classes"]))
