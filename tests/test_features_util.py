"""Helpers for the feature tests: a tiny prepared dataset written with PIL and write_labels (no tests here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from spmlbench.data.store import write_labels

GRAYS = [10 * i + 5 for i in range(12)]


def make_dataset(home: Path, name: str = "tiny", n: int = 10, *, gray: bool = False, seed: int = 0) -> list[str]:
    """Write ``n`` small images (PNG and JPEG, some in a subfolder, varied sizes) and labels.parquet.

    ``gray``: image ``i`` is a solid gray of value ``GRAYS[i]`` (its pixels features are known exactly).
    Splits: the first 60% train, then 20% val, then the rest test. Returns the image names.
    """
    root = home / name / "images"
    (root / "sub").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        h, w = 20 + 3 * i, 30 + (i % 4) * 7
        if gray:
            arr = np.full((h, w, 3), GRAYS[i], dtype=np.uint8)
            image = f"sub/g{i:02d}.png" if i % 2 else f"g{i:02d}.png"
        else:
            arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
            image = f"sub/img{i:02d}.png" if i % 2 else f"img{i:02d}.jpg"
        Image.fromarray(arr).save(root / image)
        images.append(image)
    n_train, n_val = int(0.6 * n), int(0.2 * n)
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    y = np.eye(3, dtype=np.int8)[np.arange(n) % 3]
    write_labels(home / name / "labels.parquet", images, splits, y, y, {"dataset": name})
    return images
