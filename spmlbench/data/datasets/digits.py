"""``digits``: an offline multi-label dataset built from scikit-learn's bundled handwritten digits.

Each image is a ``grid x grid`` mosaic of 8x8 digit cells; 1 to ``grid**2`` cells hold a real
digit, the rest are blank. The labels are the digit classes present (10 classes ``"0"``..``"9"``).
The official-train and official-test images use disjoint pools of scikit-learn samples. The
build is deterministic (fixed seed) and takes seconds; the protocol (single positives, split)
is then applied exactly as for the real benchmarks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
import zlib

import numpy as np

from spmlbench.data.registry import DATASETS, DatasetAdapter, FormatInput, Formatted


@dataclasses.dataclass(frozen=True)
class DigitsConfig:
    """Build parameters of the digits dataset (fixed: they define the dataset)."""

    num_train: int = 3000
    num_test: int = 3000
    grid: int = 2
    seed: int = 0
    test_pool_frac: float = 0.5


def _pools(n: int, cfg: DigitsConfig, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, test) pools of scikit-learn sample indices."""
    perm = rng.permutation(n)
    n_test = int(round(cfg.test_pool_frac * n))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def encode_png(img: np.ndarray) -> bytes:
    """Encode a 2-D uint8 array as an 8-bit grayscale PNG (no filter; far faster than PIL for tiny images)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    h, w = img.shape
    rows = np.concatenate([np.zeros((h, 1), dtype=np.uint8), np.ascontiguousarray(img, dtype=np.uint8)], axis=1)
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit grayscale, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 6)) + chunk(b"IEND", b"")


def compose(cells: np.ndarray, grid: int) -> np.ndarray:
    """Tile (grid*grid, 8, 8) uint8 cells row-major into one (8*grid, 8*grid) image."""
    rows = [np.concatenate(list(cells[r * grid:(r + 1) * grid]), axis=1) for r in range(grid)]
    return np.concatenate(rows, axis=0)


def build_split(
    pixels: np.ndarray, targets: np.ndarray, pool: np.ndarray, count: int, cfg: DigitsConfig, rng: np.random.RandomState
) -> tuple[list[np.ndarray], np.ndarray]:
    """Draw ``count`` mosaics from ``pool``: (images as uint8 arrays, (count, 10) labels)."""
    cells_per_image = cfg.grid * cfg.grid
    images, labels = [], np.zeros((count, 10), dtype=np.int8)
    for i in range(count):
        k = rng.randint(1, cells_per_image + 1)
        where = rng.choice(cells_per_image, size=k, replace=False)
        picks = pool[rng.randint(0, len(pool), size=k)]
        cells = np.zeros((cells_per_image, 8, 8), dtype=np.uint8)
        cells[where] = pixels[picks]
        labels[i, targets[picks]] = 1
        images.append(compose(cells, cfg.grid))
    return images, labels


def format_digits(inp: FormatInput) -> Formatted:
    """Build the digits dataset: PNGs under ``<work>/images/{train,test}/``, labels in memory."""
    from sklearn.datasets import load_digits

    cfg = inp.options.get("digits_config", DigitsConfig())
    data = load_digits()
    pixels = np.round(data.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    targets = data.target.astype(np.intp)
    rng = np.random.RandomState(cfg.seed)
    train_pool, test_pool = _pools(len(targets), cfg, rng)
    root = inp.work / "images"
    out: dict[str, tuple[list[str], np.ndarray]] = {}
    for split, pool, count in (("train", train_pool, cfg.num_train), ("test", test_pool, cfg.num_test)):
        images, labels = build_split(pixels, targets, pool, count, cfg, rng)
        (root / split).mkdir(parents=True, exist_ok=True)
        names = []
        for i, img in enumerate(images):
            name = f"{split}/{i:05d}.png"
            (root / name).write_bytes(encode_png(img))
            names.append(name)
        out[split] = (names, labels)
    digest = hashlib.sha256(np.ascontiguousarray(data.images).tobytes() + data.target.tobytes()).hexdigest()
    return Formatted(
        class_names=[str(d) for d in range(10)],
        train_images=out["train"][0],
        y_train=out["train"][1],
        test_images=out["test"][0],
        y_test=out["test"][1],
        image_root=root,
        sources={"sklearn.datasets.load_digits": digest},
        notes={"digits_config": dataclasses.asdict(cfg)},
    )


DATASETS.add(
    "digits",
    DatasetAdapter(
        name="digits",
        title="Digits mosaics (offline demo, scikit-learn)",
        manifest="digits",
        default_backbone="pixels",
        format=format_digits,
    ),
)
