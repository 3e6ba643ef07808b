"""PASCAL VOC 2012 -> formatted files (docs/protocol.md, section 2).

Reads ``ImageSets/Main/<class>_{train,val}.txt``; a value of ``1`` is positive, ``0``
(difficult) and ``-1`` negative. Only images with at least one positive are kept, sorted by
``<id>.jpg``. The image root is the ``VOC2012`` folder; paths are ``JPEGImages/<id>.jpg``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spmlbench.data.registry import DATASETS, DatasetAdapter, FormatInput, Formatted
from spmlbench.errors import DataError

RAW_ARCHIVE = "VOCtrainval_11-May-2012.tar"


def read_class_file(path: Path) -> dict[str, int]:
    """Parse one ``<class>_<split>.txt``: image id -> value (-1, 0 or 1; the last token of a line)."""
    if not path.is_file():
        raise DataError(f"{path}: VOC class file missing; re-extract {RAW_ARCHIVE} or fix --from")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not a UTF-8 text file ({exc.reason} at byte {exc.start}); re-extract {RAW_ARCHIVE}"
        ) from None
    values: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2 or tokens[-1] not in ("-1", "0", "1"):
            raise DataError(f"{path}:{lineno}: expected '<image id> <-1|0|1>', got {line!r}; the file is corrupt")
        if tokens[0] in values:
            raise DataError(f"{path}:{lineno}: image {tokens[0]} listed twice; the file is corrupt")
        values[tokens[0]] = int(tokens[-1])
    return values


def format_split(main_dir: Path, class_names: list[str], split: str) -> tuple[list[str], np.ndarray, list[Path]]:
    """Return (image paths, clean labels, files read) for one official split (``train`` or ``val``)."""
    files = [main_dir / f"{name}_{split}.txt" for name in class_names]
    per_class = [read_class_file(f) for f in files]
    ids = sorted(per_class[0], key=lambda i: f"{i}.jpg")
    for f, values in zip(files[1:], per_class[1:]):
        if values.keys() != per_class[0].keys():
            raise DataError(
                f"{f}: lists {len(values)} images but {files[0].name} lists {len(per_class[0])}; "
                f"the VOCdevkit is incomplete, re-extract {RAW_ARCHIVE}"
            )
    y = np.zeros((len(ids), len(class_names)), dtype=np.int8)
    for c, values in enumerate(per_class):
        y[:, c] = [values[i] == 1 for i in ids]
    keep = y.any(axis=1)
    images = [f"JPEGImages/{i}.jpg" for i, k in zip(ids, keep) if k]
    return images, y[keep], files


def format_voc(inp: FormatInput) -> Formatted:
    """Format an extracted VOCdevkit (found anywhere under the input roots)."""
    class_names = list(inp.manifest.class_names)
    preferred = inp.find_all("VOC2012", "ImageSets", "Main", kind="dir")  # not VOC2007 beside it
    hint = f"point --from at the extracted VOCdevkit or {RAW_ARCHIVE}"
    main_dir = preferred[0] if preferred else inp.find("ImageSets", "Main", kind="dir", hint=hint)
    voc_root = main_dir.parent.parent
    train_images, y_train, train_files = format_split(main_dir, class_names, "train")
    test_images, y_test, test_files = format_split(main_dir, class_names, "val")
    read = {f"ImageSets/Main/{f.name}": f for f in train_files + test_files}
    return Formatted(class_names, train_images, y_train, test_images, y_test, voc_root, read_files=read)


DATASETS.add(
    "voc",
    DatasetAdapter(
        name="voc",
        title="PASCAL VOC 2012",
        manifest="voc",
        default_backbone="resnet50",
        format=format_voc,
        raw_files=(RAW_ARCHIVE,),
    ),
)
