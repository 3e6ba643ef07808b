"""The offline digits dataset: real scikit-learn digits in a grid, deterministic, disjoint pools."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from spmlbench.data.datasets.digits import DigitsConfig, format_digits
from spmlbench.data.registry import FormatInput

SMALL = DigitsConfig(num_train=120, num_test=80)


def build(tmp_path: Path, cfg: DigitsConfig, name: str = "w"):
    work = tmp_path / name
    work.mkdir()
    return format_digits(FormatInput(roots=(), work=work, options={"digits_config": cfg}))


@pytest.fixture(scope="module")
def sk_cells() -> dict[bytes, set[int]]:
    """Every scikit-learn digit as the 8x8 uint8 cell it becomes -> its sample indices."""
    data = load_digits()
    cells: dict[bytes, set[int]] = {}
    for i, img in enumerate(data.images):
        cell = np.round(img * 255.0 / 16.0).astype(np.uint8)
        cells.setdefault(cell.tobytes(), set()).add(i)
    return cells


def split_cells(png: Path) -> list[np.ndarray]:
    img = np.asarray(Image.open(png))
    assert img.shape == (16, 16) and img.dtype == np.uint8
    return [img[r:r + 8, c:c + 8] for r in (0, 8) for c in (0, 8)]


def test_images_are_grids_of_real_digits(tmp_path: Path, sk_cells: dict[bytes, set[int]]) -> None:
    fmt = build(tmp_path, SMALL)
    target = load_digits().target
    used: dict[str, set[int]] = {"train": set(), "test": set()}
    for split, images, y in (("train", fmt.train_images, fmt.y_train), ("test", fmt.test_images, fmt.y_test)):
        for rel, row in zip(images, y):
            digits_here = set()
            filled = 0
            for cell in split_cells(fmt.image_root / rel):
                if not cell.any():
                    continue  # blank cell
                filled += 1
                idx = sk_cells[cell.tobytes()]  # KeyError: not a real digit
                used[split] |= idx
                digits_here |= {int(target[i]) for i in idx}
            assert 1 <= filled <= 4
            assert set(np.flatnonzero(row).tolist()) == digits_here
    # official train and test mosaics come from disjoint scikit-learn samples (up to exact duplicates)
    shared = used["train"] & used["test"]
    dup = {i for cell_ids in sk_cells.values() if len(cell_ids) > 1 for i in cell_ids}
    assert shared <= dup


def test_default_build_sizes_and_positives(tmp_path: Path) -> None:
    fmt = build(tmp_path, DigitsConfig())
    assert fmt.class_names == [str(d) for d in range(10)]
    assert len(fmt.train_images) == 3000 and len(fmt.test_images) == 3000
    for y in (fmt.y_train, fmt.y_test):
        per_row = y.sum(1)
        assert per_row.min() >= 1 and per_row.max() <= 4
        assert per_row.mean() >= 1.5
        assert (y.sum(0) > 200).all()  # every class well represented
    assert len(set(fmt.train_images) | set(fmt.test_images)) == 6000


def test_deterministic(tmp_path: Path) -> None:
    a, b = build(tmp_path, SMALL, "a"), build(tmp_path, SMALL, "b")
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert a.train_images == b.train_images
    for rel in a.train_images[:20] + a.test_images[:20]:
        assert (a.image_root / rel).read_bytes() == (b.image_root / rel).read_bytes()
