"""NUS-WIDE (81 concepts, Cole et al.'s community subset) -> formatted files (docs/protocol.md, section 2).

Labels and image lists come from the Zenodo files ``formatted_{train,val}_{images,labels}.npy``;
the images from the user's own ``Flickr/`` folder (or ``Flickr.zip``) obtained from NUS: the
tool never downloads them. Label-less rows are counted and kept (``--drop-unlabeled`` is a named
deviation applied later). The image root is the ``Flickr`` folder, as in the reference.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spmlbench.data.registry import DATASETS, DatasetAdapter, FormatInput, Formatted
from spmlbench.errors import DataError

FORMATTED = tuple(f"formatted_{s}_{k}.npy" for s in ("train", "val") for k in ("images", "labels"))
FLICKR_HINT = "pass --from with NUS's Flickr/ folder (or Flickr.zip) from the NUS-WIDE agreement form"


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: not a plain numpy array file ({exc}); delete it and re-run prepare") from None


def load_split(inp: FormatInput, split: str, num_classes: int) -> tuple[list[str], np.ndarray, dict[str, Path]]:
    """Read one formatted split: (image paths, 0/1 labels, files read)."""
    img_path = inp.find(f"formatted_{split}_images.npy", hint="run prepare without --from to download the Zenodo files")
    lab_path = inp.find(f"formatted_{split}_labels.npy", hint="run prepare without --from to download the Zenodo files")
    images = [str(p) for p in _load(img_path).reshape(-1)]
    labels = _load(lab_path)
    if labels.ndim != 2 or labels.shape != (len(images), num_classes):
        raise DataError(
            f"{lab_path}: shape {labels.shape}, expected ({len(images)}, {num_classes}); "
            "delete the formatted files and re-run prepare"
        )
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise DataError(f"{lab_path}: values other than 0/1; delete the formatted files and re-run prepare")
    return images, labels.astype(np.int8), {img_path.name: img_path, lab_path.name: lab_path}


def flickr_root(inp: FormatInput) -> Path:
    """The user's ``Flickr`` folder: a root named Flickr, or a ``Flickr/`` found under the roots."""
    for root in inp.roots:
        if root.name == "Flickr" and root.is_dir():
            return root
    return inp.find("Flickr", kind="dir", hint=FLICKR_HINT)


def format_nuswide(inp: FormatInput) -> Formatted:
    """Format NUS-WIDE from the Zenodo files; image paths are checked later against ``Flickr/``."""
    class_names = list(inp.manifest.class_names)
    train_images, y_train, read_train = load_split(inp, "train", len(class_names))
    test_images, y_test, read_test = load_split(inp, "val", len(class_names))
    root = flickr_root(inp)
    if train_images and train_images[0].startswith("Flickr/"):
        root = root.parent
    notes = {"unlabeled_rows": {"train": int((y_train.sum(1) == 0).sum()), "test": int((y_test.sum(1) == 0).sum())}}
    return Formatted(
        class_names, train_images, y_train, test_images, y_test, root,
        read_files={**read_train, **read_test}, notes=notes,
    )


DATASETS.add(
    "nuswide",
    DatasetAdapter(
        name="nuswide",
        title="NUS-WIDE (81 concepts, Cole et al. subset)",
        manifest="nuswide",
        default_backbone="resnet50",
        format=format_nuswide,
        raw_files=FORMATTED,
        user_supplied="Flickr/ or Flickr.zip",
    ),
)
