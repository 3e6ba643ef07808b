"""Pin a manifest's Zenodo files: read sizes and md5 from the record's API and write them in.

docs/protocol.md, section 2: the NUS-WIDE formatted files of Zenodo record 10162606 must be pinned from
``https://zenodo.org/api/records/<id>`` by tooling, not typed by hand. ``pin_manifest`` reads the
record's JSON (``files[].key``, ``files[].size``, ``files[].checksum = "md5:<hex>"``), sets
``size`` and ``md5`` on every ``[[files]]`` entry of the manifest whose name the record holds, and
rewrites the TOML text in place (comments and layout kept) atomically. A file the manifest lists
but the record lacks is an error: the manifest would otherwise point at nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

from spmlbench.atomic import atomic_write_text
from spmlbench.errors import DataError
from spmlbench.data.manifest import load_manifest, manifests_dir


@dataclasses.dataclass(frozen=True)
class RecordFile:
    """One file of a Zenodo record as its API describes it."""

    key: str
    size: int
    md5: str


def fetch_record_files(api_url: str, *, timeout: float = 60) -> dict[str, RecordFile]:
    """Return ``{file name: RecordFile}`` from a Zenodo record API URL (JSON)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(api_url, headers={"Accept": "application/json"}),
                                    timeout=timeout) as resp:
            payload = json.loads(resp.read().decode("utf-8"))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(f"{api_url}: could not read the Zenodo record ({reason}); "
                        "check the network or pass --api with a reachable copy of the record JSON") from None
    files = payload.get("files")
    if isinstance(files, dict):  # InvenioRDM style: {"entries": {...}} or {"entries": [...]}
        files = files.get("entries", files)
        if isinstance(files, dict):
            files = list(files.values())
    if not isinstance(files, list):
        raise DataError(f"{api_url}: no 'files' list in the record JSON; is this a Zenodo record API URL?")
    out: dict[str, RecordFile] = {}
    for entry in files:
        key = entry.get("key") or entry.get("filename")
        checksum = str(entry.get("checksum", ""))
        algo, _, digest = checksum.partition(":")
        if not key or algo != "md5" or not re.fullmatch(r"[0-9a-f]{32}", digest.lower()):
            raise DataError(f"{api_url}: file entry {entry!r} has no name or md5 checksum; cannot pin it")
        out[key] = RecordFile(key=key, size=int(entry.get("size", entry.get("filesize"))), md5=digest.lower())
    return out


def pin_manifest(dataset: str, *, api_url: str | None = None, manifest_dir: str | os.PathLike[str] | None = None,
                 timeout: float = 60) -> dict[str, RecordFile]:
    """Write size and md5 from the dataset's Zenodo record into ``<manifests>/<dataset>.toml``.

    ``api_url`` defaults to the manifest's ``extra.zenodo_api``. Returns the pinned files.
    """
    manifest = load_manifest(dataset, manifest_dir)
    path = manifests_dir(manifest_dir) / f"{dataset}.toml"
    url = api_url or manifest.extra.get("zenodo_api")
    if not url:
        raise DataError(f"{path}: no extra.zenodo_api in the manifest; pass --api URL")
    record = fetch_record_files(str(url), timeout=timeout)
    wanted = [f.name for f in manifest.files]
    missing = [n for n in wanted if n not in record]
    if missing:
        raise DataError(f"{path}: the Zenodo record {url} has no file(s) {', '.join(missing)} "
                        f"(it holds {', '.join(sorted(record)) or 'nothing'}); fix the names in the manifest")
    text = path.read_text(encoding="utf-8")
    new = _set_pins(text, {n: record[n] for n in wanted}, path)
    tomllib.loads(new)  # never write a manifest that no longer parses
    atomic_write_text(path, new)
    load_manifest(dataset, manifest_dir)  # and re-validate it through the normal reader
    return {n: record[n] for n in wanted}


def _set_pins(text: str, pins: dict[str, RecordFile], path: Path) -> str:
    """Set ``size``/``md5`` lines inside each ``[[files]]`` block whose ``name`` is pinned."""
    blocks = re.split(r"(?m)^(?=\[)", text)
    done: set[str] = set()
    for i, block in enumerate(blocks):
        if not block.startswith("[[files]]"):
            continue
        m = re.search(r'(?m)^name\s*=\s*"([^"]+)"\s*$', block)
        if not m or m.group(1) not in pins:
            continue
        pin = pins[m.group(1)]
        lines = [ln for ln in block.rstrip("\n").split("\n") if not re.match(r"\s*(size|md5)\s*=", ln)]
        lines += [f"size = {pin.size}", f'md5 = "{pin.md5}"']
        blocks[i] = "\n".join(lines) + "\n\n"
        done.add(pin.key)
    if set(pins) - done:
        raise DataError(f"{path}: could not find [[files]] blocks for {sorted(set(pins) - done)}; fix the manifest")
    return "".join(blocks).rstrip("\n") + "\n"
