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
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from spmlbench import __version__
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
from spmlbench.errors import ConfigError, DataError
from spmlbench.paths import data_home

ARCHIVE_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
FEATURE_MODES = ("default", "none", "zenodo", "extract")

Say = Callable[[str], None]
Confirm = Callable[[str], bool]


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """User choices for one ``prepare`` call (the CLI flags)."""

    source: Path | None = None
    mirror: str | None = None
    label_seed: int = PROTOCOL_SEED
    drop_unlabeled: bool = False


@dataclasses.dataclass(frozen=True)
class PrepareResult:
    """What ``prepare`` wrote: the dataset folder, split counts and count mismatches (if any)."""

    dataset: str
    path: Path
    counts: dict[str, int]
    count_mismatches: list[dict[str, Any]]
    metadata: dict[str, Any]


def is_archive(path: Path | str) -> bool:
    """True when the file name looks like a tar or zip archive."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def sha256_file(path: Path) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def mirror_url(mirror: str, file_name: str, num_files: int) -> str:
    """The URL to try first for ``file_name``: ``mirror`` itself for a one-file dataset, else ``mirror/<name>``.

    A mirror ending in ``/`` is always a folder; one already ending in the file name is used as is.
    """
    if mirror.rstrip("/").endswith("/" + file_name) or (num_files == 1 and not mirror.endswith("/")):
        return mirror
    return mirror.rstrip("/") + "/" + file_name


def _load_manifest(adapter: DatasetAdapter) -> Any:
    if adapter.manifest is None:
        return None
    from spmlbench.data import manifest as manifest_mod

    return manifest_mod.load_manifest(adapter.manifest)


def _previous_metadata(dataset_path: Path) -> dict[str, Any]:
    """Metadata of an existing labels.parquet (empty when there is none or it is unreadable)."""
    import pyarrow.parquet as pq

    from spmlbench.data.store import META_KEY

    try:
        meta = pq.read_schema(dataset_path / "labels.parquet").metadata or {}
        return json.loads(meta.get(META_KEY, b"{}"))
    except Exception:  # noqa: BLE001 - absent or unreadable: nothing to reuse
        return {}


@dataclasses.dataclass
class _Raw:
    """Where the raw data is: search roots, sha256 of verified sources, archives to delete later."""

    roots: list[Path] = dataclasses.field(default_factory=list)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    user_roots: list[str] = dataclasses.field(default_factory=list)
    downloaded_archives: list[Path] = dataclasses.field(default_factory=list)
    reused_raw: bool = False


def _acquire(
    adapter: DatasetAdapter,
    manifest: Any,
    opts: PrepareOptions,
    home: Path,
    staging: Path,
    confirm: Confirm,
    say: Say,
) -> _Raw:
    """Find, verify, download and extract the raw files the adapter needs."""
    raw = _Raw()
    if not adapter.raw_files and adapter.user_supplied is None:
        if opts.source is not None:
            raise ConfigError(f"--from {opts.source}: {adapter.name} is built offline and takes no source; drop --from")
        return raw
    final = home / adapter.name
    source = opts.source.expanduser().resolve() if opts.source is not None else None
    if source is not None and not source.exists():
        raise DataError(f"{opts.source}: no such file or folder; check the --from path")
    from_dir = source if source is not None and source.is_dir() else None
    from_file = source if source is not None and source.is_file() else None

    have_tree = from_dir is not None
    if from_dir is not None:
        raw.roots.append(from_dir)
        raw.user_roots.append(str(from_dir))
    if source is None:
        previous = [Path(p) for p in _previous_metadata(final).get("user_roots", []) if Path(p).is_dir()]
        if (final / "raw").is_dir():
            raw.roots.append(final / "raw")
            raw.reused_raw = True
        raw.roots += previous
        raw.user_roots += [str(p) for p in previous]
        have_tree = bool(raw.roots)
        if have_tree:
            say(f"{adapter.name}: reusing {', '.join(str(r) for r in raw.roots)}")
    if adapter.user_supplied is not None and not have_tree and from_file is None:
        raise DataError(
            f"{adapter.name}: the images ({adapter.user_supplied}) are never downloaded by spmlbench; "
            f"pass --from with your copy ({(manifest.homepage if manifest else '') or 'see the dataset homepage'})"
        )

    local: list[tuple[Any, Path, bool]] = []  # (spec, path, downloaded)
    to_download = []
    from_file_used = False
    for name in adapter.raw_files:
        spec = manifest.file(name)
        candidates = []
        if from_file is not None and (from_file.name == name or len(adapter.raw_files) == 1 and adapter.user_supplied is None):
            candidates.append(from_file)
        if is_archive(name):  # a folder the user named, or beside the archive they named
            folders = [from_dir] if from_dir is not None else []
        else:  # plain files (NUS-WIDE's formatted .npy) may sit in or beside any known folder
            folders = [*raw.roots, *(r.parent for r in raw.roots)]
        if from_file is not None:
            folders.append(from_file.parent)
        candidates += [folder / name for folder in folders]
        found = next((c for c in candidates if c.is_file()), None)
        if found is not None:
            from_file_used |= found == from_file
            _verify(found, spec, say)
            local.append((spec, found, False))
        elif have_tree and is_archive(name):
            continue  # the folder holds it extracted
        else:
            to_download.append(spec)
    if from_file is not None and not from_file_used:
        if adapter.user_supplied is None or not is_archive(from_file):
            names = ", ".join(adapter.raw_files)
            raise DataError(f"{from_file}: not one of the {adapter.name} files ({names}); pass one of them or the extracted folder")
        say(f"{from_file}: your {adapter.user_supplied} (no checksum is published; not verified)")
        local.append((None, from_file, False))

    if to_download:
        downloads = home / "downloads" / adapter.name
        pending = [s for s in to_download if not (downloads / s.name).is_file()]
        if pending:
            terms = (manifest.terms if manifest else "") or f"{adapter.title}: see the dataset homepage for its terms."
            size = sum(s.size or 0 for s in pending)
            prompt = f"{terms}\nDownload {len(pending)} file(s) ({size / 1e9:.2f} GB) for {adapter.name} and accept these terms?"
            if not confirm(prompt):
                raise DataError(f"{adapter.name}: terms of use not accepted, nothing downloaded; re-run with --yes to accept them")
        from spmlbench.data.download import fetch

        for spec in to_download:
            extra = (mirror_url(opts.mirror, spec.name, len(adapter.raw_files)),) if opts.mirror else ()
            path = fetch(spec, downloads, extra_urls=extra)
            local.append((spec, path, True))

    for spec, path, downloaded in local:
        if spec is not None:
            raw.sources[spec.name] = spec.sha256 or sha256_file(path)
        if is_archive(path):
            say(f"extracting {path.name}")
            from spmlbench.data.archive import safe_extract

            safe_extract(path, staging / "raw")
            if downloaded:
                raw.downloaded_archives.append(path)
        elif path.parent not in raw.roots:
            raw.roots.append(path.parent)
    if (staging / "raw").is_dir():
        raw.roots.insert(0, staging / "raw")
    return raw


def _verify(path: Path, spec: Any, say: Say) -> None:
    """Verify a user-supplied file like a download (size and checksums pinned by the manifest)."""
    from spmlbench.data.download import verify_file

    if not (spec.size or spec.md5 or spec.sha256):
        say(f"{path}: no checksum pinned for {spec.name} in the manifest; used unverified")
        return
    say(f"verifying {path}")
    verify_file(path, spec)


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
) -> PrepareResult:
    """Prepare ``dataset`` into ``<home>/<dataset>/`` (see the module docstring); all or nothing.

    ``confirm(prompt)`` is asked before the first download (terms of use); ``say``/``warn`` print
    progress and loud warnings (count mismatches). Errors raise SpmlError subclasses.
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
        raw = _acquire(adapter, manifest, opts, home_dir, staging, confirm, say)
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
    raw: _Raw,
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
            f"differs from data_manifests/{dataset}.toml; check the raw files or the manifest"
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


def run_features(dataset: str, mode: str, *, home: str | os.PathLike[str] | None = None, source: Path | None = None) -> Path | None:
    """After labels are written: extract (``default``/``extract``), import Zenodo (``zenodo``) or skip (``none``)."""
    if mode not in FEATURE_MODES:
        raise ConfigError(f"--features {mode!r}: unknown mode; choose one of {', '.join(FEATURE_MODES)}")
    if mode == "none":
        return None
    if mode == "zenodo":
        from spmlbench.features.zenodo import import_zenodo_features

        folder = source if source is not None and Path(source).is_dir() else data_home(home) / "downloads" / dataset
        return import_zenodo_features(dataset, Path(folder), home=home)
    from spmlbench.features.extract import extract_features

    return extract_features(dataset, None, home=home)
