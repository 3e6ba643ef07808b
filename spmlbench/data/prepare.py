"""``prepare``: raw data -> ``$SPMLBENCH_HOME/<ds>/labels.parquet`` (+ ``images``), all or nothing.

Steps: obtain the raw files (``--from`` archive verified by checksum, ``--from`` folder used in
place, or a download after the terms were accepted), extract archives, format (the dataset's
adapter), optionally drop label-less rows (a named deviation), check every image exists, sample
single positives and split (protocol.py), compare counts with the manifest, write.

Everything is built in ``<home>/.<ds>.partial-*`` and renamed onto ``<home>/<ds>`` at the end,
so a failure leaves the data home as it was. Layout of a prepared dataset::

    <ds>/labels.parquet
    <ds>/images      folder (digits), or a symlink: relative into raw/ for extracted archives,
                     absolute to the user's --from folder; where symlinks are unavailable the
                     target is written to <ds>/images.path instead
    <ds>/raw/        extracted archives (kept, so re-preparing needs no download)
    <ds>/features/   feature caches (kept across re-prepares)

Downloads go to ``<home>/downloads/<ds>/`` (resumable ``.part`` files); a downloaded archive is
deleted once it was extracted and the dataset installed, a downloaded plain file is kept there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from spmlbench import __version__
from spmlbench.data.acquire import Confirm, PrepareOptions, RawFiles, Say, acquire, sha256_file
from spmlbench.data.protocol import PROTOCOL_SEED, VAL_FRAC, apply_protocol
from spmlbench.data.registry import (
    IMAGES_DIR,
    IMAGES_POINTER,
    DatasetAdapter,
    FormatInput,
    Formatted,
    get_adapter,
)
from spmlbench.data.staging import clean_stale, disown, make_staging
from spmlbench.data.store import write_labels
from spmlbench.errors import DataError
from spmlbench.paths import data_home
from spmlbench.progress import Sink

@dataclasses.dataclass(frozen=True)
class PrepareResult:
    """What ``prepare`` wrote: the dataset folder, split counts and count mismatches (if any)."""

    dataset: str
    path: Path
    counts: dict[str, int]
    count_mismatches: list[dict[str, Any]]
    metadata: dict[str, Any]


def _load_manifest(adapter: DatasetAdapter) -> Any:
    if adapter.manifest is None:
        return None
    from spmlbench.data import manifest as manifest_mod

    return manifest_mod.load_manifest(adapter.manifest)


def drop_unlabeled_rows(fmt: Formatted) -> dict[str, int]:
    """Remove rows without any positive from both files in place; return how many were dropped."""
    dropped = {}
    for split, img_attr, y_attr in (("train", "train_images", "y_train"), ("test", "test_images", "y_test")):
        y = getattr(fmt, y_attr)
        keep = y.any(axis=1)
        dropped[split] = int((~keep).sum())
        setattr(fmt, img_attr, [p for p, k in zip(getattr(fmt, img_attr), keep) if k])
        setattr(fmt, y_attr, y[keep])
    return dropped


def check_images(fmt: Formatted, dataset: str, hint: str) -> None:
    """Raise DataError when any listed image is missing under the image root (count + examples)."""
    root = fmt.image_root
    missing = [p for p in fmt.train_images + fmt.test_images if not (root / p).is_file()]
    if missing:
        total = len(fmt.train_images) + len(fmt.test_images)
        examples = ", ".join(missing[:3])
        raise DataError(f"{root}: {len(missing)} of {total} {dataset} images are missing (e.g. {examples}); {hint}")


def compare_counts(expected: dict[str, int], found: dict[str, int]) -> list[dict[str, Any]]:
    """Every expected count that differs from what was found (keys absent from ``found`` are skipped)."""
    return [
        {"what": key, "expected": int(value), "found": int(found[key])}
        for key, value in sorted(expected.items())
        if key in found and int(found[key]) != int(value)
    ]


def _link_images(image_root: Path, staging: Path, final: Path) -> dict[str, str]:
    """Make ``staging/images`` point at the image root; return how (for the metadata)."""
    image_root = Path(os.path.abspath(image_root))
    if image_root == staging / IMAGES_DIR:
        return {"kind": "folder"}
    if image_root.is_relative_to(staging):
        target = os.path.relpath(image_root, staging)
    elif image_root.is_relative_to(final):
        target = os.path.relpath(image_root, final)
    else:
        target = str(image_root.resolve())
    try:
        os.symlink(target, staging / IMAGES_DIR, target_is_directory=True)
        return {"kind": "symlink", "target": target}
    except OSError:
        (staging / IMAGES_POINTER).write_text(target + "\n", encoding="utf-8")
        return {"kind": "pointer", "target": target}


def _install(staging: Path, final: Path, carry: tuple[str, ...]) -> None:
    """Rename ``staging`` onto ``final``, keeping ``carry`` sub-folders of an existing ``final``."""
    moved: list[str] = []
    old = None
    try:
        if final.exists() or final.is_symlink():
            for name in carry:
                if (final / name).exists() and not (staging / name).exists():
                    os.replace(final / name, staging / name)
                    moved.append(name)
            old = final.parent / f".{final.name}.old-{secrets.token_hex(4)}"
            os.replace(final, old)
        os.replace(staging, final)
    except OSError as exc:
        if old is not None and not final.exists():
            os.replace(old, final)
        for name in moved:
            with contextlib.suppress(OSError):
                os.replace(staging / name, final / name)
        raise DataError(f"{final}: could not install the prepared dataset ({exc}); check permissions and free space") from None
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_metadata(
    dataset: str,
    manifest: Any,
    fmt: Formatted,
    opts: PrepareOptions,
    counts: dict[str, int],
    found: dict[str, int],
    mismatches: list[dict[str, Any]],
    sources: dict[str, str],
    deviations: list[str],
    positives: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The labels.parquet metadata dict (keys of docs/architecture.md plus provenance extras)."""
    return {
        "dataset": dataset,
        "title": manifest.title if manifest is not None else dataset,
        "num_classes": len(fmt.class_names),
        "class_names": list(fmt.class_names),
        "counts": counts,
        "official_counts": {"official_train": found["official_train"], "official_val": found["official_val"]},
        "protocol": {
            "val_frac": VAL_FRAC,
            "split_seed": PROTOCOL_SEED,
            "label_seed": int(opts.label_seed),
            "deviations": deviations,
        },
        "sources": sources,
        "expected_positives": {
            "computed": positives,
            "computed_on": "clean labels of the train split",
            "paper": manifest.expected_positives_paper if manifest is not None else None,
        },
        "expected_counts": dict(manifest.expected_counts) if manifest is not None else {},
        "count_mismatches": mismatches,
        "spmlbench_version": __version__,
        **extra,
    }


def prepare_dataset(
    dataset: str = "digits",
    opts: PrepareOptions | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    confirm: Confirm = lambda prompt: False,
    say: Say = lambda msg: None,
    warn: Say = lambda msg: None,
    progress: Sink | None = None,
) -> PrepareResult:
    """Prepare ``dataset`` into ``<home>/<dataset>/`` (see the module docstring); all or nothing.

    ``confirm(prompt)`` is asked before the first download (terms of use); ``say``/``warn`` print
    progress and loud warnings (count mismatches); ``progress`` receives download and extraction events.
    Errors raise SpmlError subclasses.
    """
    opts = opts or PrepareOptions()
    adapter = get_adapter(dataset)
    manifest = _load_manifest(adapter)
    home_dir = data_home(home)
    home_dir.mkdir(parents=True, exist_ok=True)
    final = home_dir / dataset
    clean_stale(home_dir, dataset, say)
    staging = make_staging(home_dir, dataset)
    try:
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; a dataset folder is ordinary
        raw = acquire(adapter, manifest, opts, home_dir, staging, confirm, say, progress)
        say(f"formatting {dataset}")
        fmt = adapter.format(FormatInput(roots=tuple(raw.roots), work=staging, manifest=manifest))
        fmt.check(dataset)
        result = _finish(adapter, manifest, fmt, raw, opts, staging, final, say, warn)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    for archive in raw.downloaded_archives:
        with contextlib.suppress(OSError):
            archive.unlink()
    return result


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _finish(
    adapter: DatasetAdapter,
    manifest: Any,
    fmt: Formatted,
    raw: RawFiles,
    opts: PrepareOptions,
    staging: Path,
    final: Path,
    say: Say,
    warn: Say,
) -> PrepareResult:
    """Checks, protocol, metadata, write and install (the part after formatting)."""
    dataset = adapter.name
    if manifest is not None and manifest.class_names and tuple(fmt.class_names) != tuple(manifest.class_names):
        raise DataError(
            f"{dataset}: the raw data's class list ({len(fmt.class_names)} classes, first {fmt.class_names[:3]}) "
            f"differs from spmlbench/data_manifests/{dataset}.toml; check the raw files or the manifest"
        )
    unlabeled = {"train": int((~fmt.y_train.any(axis=1)).sum()), "test": int((~fmt.y_test.any(axis=1)).sum())}
    found = {
        "official_train": len(fmt.train_images),
        "official_val": len(fmt.test_images),
        "unlabeled_official_train": unlabeled["train"],
        "unlabeled_official_val": unlabeled["test"],
    }
    deviations: list[str] = []
    extra: dict[str, Any] = {"unlabeled_rows": unlabeled, "notes": fmt.notes, "user_roots": raw.user_roots}
    if unlabeled["train"] or unlabeled["test"]:
        say(f"{dataset}: {unlabeled['train']} train and {unlabeled['test']} test rows have no positive label")
    if opts.drop_unlabeled:
        extra["dropped_unlabeled"] = drop_unlabeled_rows(fmt)
        deviations.append("drop-unlabeled")
        say(f"{dataset}: --drop-unlabeled removed {extra['dropped_unlabeled']} (deviation 'drop-unlabeled')")
    hint = (
        f"supply the complete {adapter.user_supplied} with --from"
        if adapter.user_supplied
        else "re-extract the archive or point --from at a complete copy"
    )
    check_images(fmt, dataset, hint)

    proto = apply_protocol(fmt.y_train, fmt.y_test, label_seed=opts.label_seed)
    splits = proto.train_splits + ["test"] * len(fmt.test_images)
    counts = {s: splits.count(s) for s in ("train", "val", "test")}
    found.update(counts)
    mismatches = compare_counts(manifest.expected_counts if manifest is not None else {}, found)
    for m in mismatches:
        warn(
            f"COUNT MISMATCH {dataset} {m['what']}: expected {m['expected']}, found {m['found']} "
            "(recorded in labels.parquet metadata; results will not match the literature)"
        )

    sources = dict(fmt.sources)
    sources.update(raw.sources)
    for name, path in fmt.read_files.items():
        sources[name] = sha256_file(path)
    extra["images"] = _link_images(fmt.image_root, staging, final)
    train_rows = fmt.y_train[np.asarray(proto.train_splits, dtype=object) == "train"]
    positives = float(train_rows.sum(axis=1).mean()) if len(train_rows) else 0.0
    meta = build_metadata(dataset, manifest, fmt, opts, counts, found, mismatches, sources, deviations, positives, extra)
    labels = np.concatenate([fmt.y_train, fmt.y_test]).astype(np.int8)
    observed = np.concatenate([proto.train_observed, proto.test_observed]).astype(np.int8)
    write_labels(staging / "labels.parquet", fmt.train_images + fmt.test_images, splits, labels, observed, meta)
    carry = ("features", "raw") if raw.reused_raw else ("features",)
    disown(staging)
    _install(staging, final, carry)
    say(f"{dataset}: wrote {final / 'labels.parquet'} ({counts['train']} train, {counts['val']} val, {counts['test']} test)")
    return PrepareResult(dataset, final, counts, mismatches, meta)
