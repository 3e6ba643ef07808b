"""Dataset manifests: ``spmlbench/data_manifests/<dataset>.toml`` read into frozen dataclasses.

A manifest holds every fact the code needs about one dataset's sources (file names, mirror
URLs in order, sizes, md5/sha256), its class order, expected row counts, terms of use and
citation. No URL or checksum lives in code.

The folder is ``manifest_dir`` if given, else ``$SPMLBENCH_MANIFESTS``, else the shipped one
(:func:`spmlbench.paths.shipped`). Only dataset manifests are looked up there: the package's other data (recipes,
loss defaults, citations) always comes from the shipped folder.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spmlbench.errors import DataError
from spmlbench.paths import shipped

ENV_MANIFESTS = "SPMLBENCH_MANIFESTS"

_HEX_LENGTHS = {"md5": 32, "sha256": 64}
_FILE_KEYS = {"name", "urls", "size", "md5", "sha256"}
_TOP_KEYS = {
    "name",
    "title",
    "files",
    "class_names",
    "expected_counts",
    "expected_positives_paper",
    "terms",
    "citation",
    "homepage",
    "extra",
}


@dataclass(frozen=True)
class FileSpec:
    """One source file: its name, mirror URLs (tried in order) and the checks it must pass.

    ``size``, ``md5`` and ``sha256`` are None where the manifest does not pin them.
    """

    name: str
    urls: tuple[str, ...]
    size: int | None = None
    md5: str | None = None
    sha256: str | None = None

    @property
    def verifiable(self) -> bool:
        """True when at least one of size, md5 or sha256 is pinned."""
        return self.size is not None or self.md5 is not None or self.sha256 is not None


@dataclass(frozen=True)
class Manifest:
    """Everything known about one dataset's sources, classes, counts, terms and citation."""

    name: str
    title: str
    files: tuple[FileSpec, ...]
    class_names: tuple[str, ...]
    expected_counts: dict[str, int] = field(default_factory=dict)
    expected_positives_paper: float | None = None
    terms: str = ""
    citation: str = ""
    homepage: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def file(self, name: str) -> FileSpec:
        """Return the file called ``name``; an unknown name raises DataError listing the known ones."""
        for spec in self.files:
            if spec.name == name:
                return spec
        known = ", ".join(f.name for f in self.files) or "none"
        raise DataError(
            f"manifest {self.name}: no file named {name!r} (files: {known}); "
            f"use one of the listed names or add it to spmlbench/data_manifests/{self.name}.toml"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes listed (0 where they are read from the data at prepare time)."""
        return len(self.class_names)


def manifests_dir(manifest_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the dataset manifest folder: the argument, else ``$SPMLBENCH_MANIFESTS``, else the shipped
    ``spmlbench/data_manifests``."""
    if manifest_dir is not None:
        return Path(manifest_dir).expanduser()
    env = os.environ.get(ENV_MANIFESTS)
    if env:
        return Path(env).expanduser()
    return shipped()


def available_manifests(manifest_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Return the dataset names that have a manifest (sorted), e.g. ``["coco", "cub", ...]``.

    Other TOML files in the folder (loss defaults, recipes) are skipped: a dataset manifest is
    one whose ``name`` equals its file stem and that lists ``class_names``.
    """
    folder = manifests_dir(manifest_dir)
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.toml") if _is_dataset_manifest(p))


def _is_dataset_manifest(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return False
    return raw.get("name") == path.stem and "class_names" in raw


def load_manifest(dataset: str, manifest_dir: str | os.PathLike[str] | None = None) -> Manifest:
    """Read and validate ``<manifest folder>/<dataset>.toml``; problems raise DataError naming the file."""
    folder = manifests_dir(manifest_dir)
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", dataset):
        raise DataError(f"{dataset!r}: not a dataset name; use one of {_known(folder)}")
    path = folder / f"{dataset}.toml"
    if not path.is_file():
        raise DataError(
            f"{path}: no manifest for dataset {dataset!r}; use one of {_known(folder)} "
            f"or set {ENV_MANIFESTS} to the folder holding <dataset>.toml"
        )
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise DataError(f"{path}: invalid TOML ({exc}); fix the file") from exc
    return _parse(raw, path, dataset)


def _known(folder: Path) -> str:
    names = available_manifests(folder)
    return ", ".join(names) if names else f"none (no *.toml in {folder})"


def _parse(raw: dict[str, Any], path: Path, dataset: str) -> Manifest:
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise DataError(
            f"{path}: unknown keys {sorted(unknown)}; allowed keys are {sorted(_TOP_KEYS)} "
            "(put dataset-specific values under [extra])"
        )
    name = _req(raw, "name", str, path)
    if name != dataset:
        raise DataError(f"{path}: name = {name!r} but the file is for {dataset!r}; make them agree")
    files = tuple(_parse_file(entry, path, i) for i, entry in enumerate(raw.get("files", [])))
    names = [f.name for f in files]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: file names listed twice: {dupes}; keep one entry per file")
    class_names = raw.get("class_names", [])
    if not isinstance(class_names, list) or not all(isinstance(c, str) and c for c in class_names):
        raise DataError(f"{path}: class_names must be a list of non-empty strings; fix the file")
    if len(set(class_names)) != len(class_names):
        raise DataError(f"{path}: class_names has duplicates; fix the file")
    counts = raw.get("expected_counts", {})
    if not isinstance(counts, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts.values()
    ):
        raise DataError(f"{path}: expected_counts must map names to non-negative integers; fix the file")
    positives = raw.get("expected_positives_paper")
    if positives is not None and (isinstance(positives, bool) or not isinstance(positives, int | float)):
        raise DataError(f"{path}: expected_positives_paper must be a number; fix the file")
    extra = raw.get("extra", {})
    if not isinstance(extra, dict):
        raise DataError(f"{path}: [extra] must be a table; fix the file")
    return Manifest(
        name=name,
        title=_req(raw, "title", str, path),
        files=files,
        class_names=tuple(class_names),
        expected_counts=dict(counts),
        expected_positives_paper=None if positives is None else float(positives),
        terms=_opt_str(raw, "terms", path).strip(),
        citation=_opt_str(raw, "citation", path).strip(),
        homepage=_opt_str(raw, "homepage", path),
        extra=dict(extra),
    )


def _parse_file(entry: Any, path: Path, index: int) -> FileSpec:
    where = f"{path}: files[{index}]"
    if not isinstance(entry, dict):
        raise DataError(f"{where} must be a table ([[files]]); fix the file")
    unknown = set(entry) - _FILE_KEYS
    if unknown:
        raise DataError(f"{where}: unknown keys {sorted(unknown)}; allowed keys are {sorted(_FILE_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in {".", ".."}:
        raise DataError(f"{where}: name must be a plain file name; fix the file")
    urls = entry.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise DataError(f"{where} ({name}): urls must be a list of strings; fix the file")
    for url in urls:
        if not re.match(r"https?://", url):
            raise DataError(f"{where} ({name}): URL {url!r} is not http(s); fix the file")
    size = entry.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise DataError(f"{where} ({name}): size must be a non-negative integer of bytes; fix the file")
    digests: dict[str, str | None] = {}
    for algo, length in _HEX_LENGTHS.items():
        value = entry.get(algo)
        if value is not None and (not isinstance(value, str) or not re.fullmatch(rf"[0-9a-f]{{{length}}}", value)):
            raise DataError(
                f"{where} ({name}): {algo} must be {length} lowercase hex digits, got {value!r}; fix the file"
            )
        digests[algo] = value
    return FileSpec(name=name, urls=tuple(urls), size=size, md5=digests["md5"], sha256=digests["sha256"])


def _req(raw: dict[str, Any], key: str, typ: type, path: Path) -> Any:
    value = raw.get(key)
    if not isinstance(value, typ) or (isinstance(value, str) and not value):
        raise DataError(f"{path}: missing or invalid {key!r}; add it to the file")
    return value


def _opt_str(raw: dict[str, Any], key: str, path: Path) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise DataError(f"{path}: {key!r} must be a string; fix the file")
    return value
