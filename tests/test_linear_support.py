"""Small synthetic linear-probe data shared by the trainer and runner tests (helpers, no tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spmlbench.train.linear import LinearData


def synthetic_arrays(n: int = 200, d: int = 12, c: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features correlated with labels (``x = y A + noise``), clean labels and one observed positive per row."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.3).astype(np.int8)
    y[np.arange(n), rng.integers(0, c, n)] = 1
    x = (y @ rng.normal(size=(c, d)) + 1.2 * rng.normal(size=(n, d))).astype(np.float32)
    s = np.zeros_like(y)
    for i in range(n):
        s[i, rng.choice(np.flatnonzero(y[i]))] = 1
    return x, y, s


def synthetic_data(n_train: int = 96, n_val: int = 40, n_test: int = 64, d: int = 12, c: int = 4) -> LinearData:
    """A LinearData fixture (float32 tensors)."""
    x, y, s = synthetic_arrays(n_train + n_val + n_test, d, c)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    a, b = n_train, n_train + n_val
    return LinearData("fixture", t(x[:a]), t(x[a:b]), t(x[b:]), t(y[:a]), t(s[:a]), t(y[a:b]), t(s[a:b]), t(y[b:]))


def write_dataset(home: Path, name: str = "voc", backbone: str = "resnet50", n: int = 200) -> None:
    """Write labels.parquet and a feature cache for a tiny dataset under ``home`` (protocol seeds 1200)."""
    from spmlbench.data.store import write_labels
    from spmlbench.features.store import write_features
    from spmlbench.paths import features_path, labels_path

    x, y, s = synthetic_arrays(n)
    splits = ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    observed = np.where(np.array(splits)[:, None] == "test", y, s)
    images = [f"img{i:04d}.png" for i in range(n)]
    meta = {"dataset": name, "protocol": {"label_seed": 1200, "split_seed": 1200, "val_frac": 0.2},
            "expected_positives": {"computed": 1.6, "paper": None}}
    write_labels(labels_path(name, home), images, splits, y, observed, meta)
    write_features(features_path(name, backbone, home), images, x, {"backbone": backbone})
