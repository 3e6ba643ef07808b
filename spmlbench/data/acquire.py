"""Getting a dataset's raw files for ``prepare``: the user's ``--from`` archive (verified) or folder, what
an earlier prepare left, or downloads (after the terms were accepted), then extraction into the staging
folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from spmlbench.data.protocol import PROTOCOL_SEED
from spmlbench.data.registry import DatasetAdapter
from spmlbench.errors import ConfigError, DataError
from spmlbench.progress import Sink

ARCHIVE_SUFFIXES = (".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")

Say = Callable[[str], None]
Confirm = Callable[[str], bool]


@dataclasses.dataclass(frozen=True)
class PrepareOptions:
    """User choices for one ``prepare`` call (the CLI flags)."""

    source: Path | None = None
    mirror: str | None = None
    label_seed: int = PROTOCOL_SEED
    drop_unlabeled: bool = False


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
class RawFiles:
    """Where the raw data is: search roots, sha256 of verified sources, archives to delete later."""

    roots: list[Path] = dataclasses.field(default_factory=list)
    sources: dict[str, str] = dataclasses.field(default_factory=dict)
    user_roots: list[str] = dataclasses.field(default_factory=list)
    downloaded_archives: list[Path] = dataclasses.field(default_factory=list)
    reused_raw: bool = False


def acquire(
    adapter: DatasetAdapter,
    manifest: Any,
    opts: PrepareOptions,
    home: Path,
    staging: Path,
    confirm: Confirm,
    say: Say,
    progress: Sink | None = None,
) -> RawFiles:
    """Find, verify, download and extract the raw files the adapter needs."""
    raw = RawFiles()
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
            path = fetch(spec, downloads, extra_urls=extra, progress=progress)
            local.append((spec, path, True))

    for spec, path, downloaded in local:
        if spec is not None:
            raw.sources[spec.name] = spec.sha256 or sha256_file(path)
        if is_archive(path):
            say(f"extracting {path.name}")
            from spmlbench.data.archive import safe_extract

            safe_extract(path, staging / "raw", progress=progress)
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
