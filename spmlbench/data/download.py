"""Resumable, verified downloads of manifest files (stdlib ``urllib``; progress as events, see ``spmlbench.progress``).

``fetch`` streams a file to ``<dest>/<name>.part``, resumes an existing ``.part`` with an HTTP
Range request, verifies size, md5 and sha256 (whichever the manifest pins) and renames it to
``<dest>/<name>`` only after it verified. A mirror that is down, answers 404 or serves other
bytes is skipped for the next one; when every mirror failed, one ``DownloadError`` line names
the file, each URL with its reason, and the fix.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import filelock

from spmlbench import __version__
from spmlbench.data.manifest import FileSpec
from spmlbench.errors import DataError, DownloadError
from spmlbench.progress import Reporter, Sink

CHUNK = 1 << 20
#: Consecutive interruptions after which a mirror is given up (each retry that made progress resets it).
MAX_RETRIES_WITHOUT_PROGRESS = 3
#: Free space kept in reserve beyond the file itself.
SPACE_MARGIN = 64 << 20
_USER_AGENT = f"spmlbench/{__version__} (+python-urllib)"
_FIX = "download it yourself (any mirror above) and pass --from PATH, or add a working mirror with --mirror URL"


class _UrlFailed(Exception):
    """One mirror failed; ``reason`` is a short phrase for the final error line."""

    def __init__(self, reason: str, *, keep_part: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keep_part = keep_part


@dataclass
class _Hashers:
    md5: "hashlib._Hash"
    sha256: "hashlib._Hash"
    size: int = 0

    @classmethod
    def new(cls) -> _Hashers:
        return cls(hashlib.md5(usedforsecurity=False), hashlib.sha256())

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)

    def update_from_file(self, path: Path) -> None:
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                self.update(chunk)


def hash_file(path: str | os.PathLike[str]) -> dict[str, str | int]:
    """Return ``{"size": bytes, "md5": hex, "sha256": hex}`` of a file, read once in 1 MiB chunks."""
    hashers = _Hashers.new()
    hashers.update_from_file(Path(path))
    return {"size": hashers.size, "md5": hashers.md5.hexdigest(), "sha256": hashers.sha256.hexdigest()}


def _mismatch(spec: FileSpec, size: int, md5: str | None, sha256: str | None) -> str | None:
    """Return a phrase describing the first check that fails, or None when everything pinned matches."""
    if spec.size is not None and size != spec.size:
        return f"size {size} bytes, expected {spec.size}"
    if spec.md5 is not None and md5 is not None and md5 != spec.md5:
        return f"md5 {md5}, expected {spec.md5}"
    if spec.sha256 is not None and sha256 is not None and sha256 != spec.sha256:
        return f"sha256 {sha256}, expected {spec.sha256}"
    return None


def verify_file(path: str | os.PathLike[str], spec: FileSpec) -> None:
    """Check ``path`` against the size, md5 and sha256 of ``spec``; a mismatch raises DataError.

    The size is checked first (cheap, catches truncated downloads), then the digests in one pass.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected {spec.name}); download it or pass --from PATH")
    size = path.stat().st_size
    problem = _mismatch(spec, size, None, None)
    if problem is None and (spec.md5 is not None or spec.sha256 is not None):
        digests = hash_file(path)
        problem = _mismatch(spec, size, str(digests["md5"]), str(digests["sha256"]))
    if problem is not None:
        raise DataError(
            f"{path}: {problem}; it is incomplete or not the expected {spec.name}: "
            "delete it and download again, or pass --from a file with the right checksum"
        )


def fetch(
    spec: FileSpec,
    dest_dir: str | os.PathLike[str],
    *,
    extra_urls: Sequence[str] = (),
    progress: Sink | None = None,
    timeout: float = 60,
) -> Path:
    """Download ``spec`` into ``dest_dir/<name>`` (verified), trying ``extra_urls`` then the manifest's mirrors.

    An already present file that verifies is returned without network access. A partial
    ``<name>.part`` left by an interrupted run is resumed with an HTTP Range request.
    Raises DownloadError (one line: file, every URL with its reason, the fix) when all mirrors fail.
    ``progress`` receives the byte counts as events (one task per connection).
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / spec.name
    part = dest / f"{spec.name}.part"
    report = Reporter(progress)
    with _exclusive(dest, spec):
        if final.is_file():
            if not spec.verifiable:
                return final
            try:
                verify_file(final, spec)
                return final
            except DataError as exc:
                report.note(f"{exc}: downloading it again", "warning")
                final.unlink()
        urls = list(dict.fromkeys([*extra_urls, *spec.urls]))
        if not urls:
            raise DownloadError(f"{spec.name}: no download URL is known; {_FIX}")
        _check_space(dest, spec, part)
        failures: list[str] = []
        for url in urls:
            try:
                _download_verified(url, spec, part, report, timeout)
            except _UrlFailed as exc:
                failures.append(f"{url} ({exc.reason})")
                if not exc.keep_part:
                    part.unlink(missing_ok=True)
                continue
            os.replace(part, final)
            if not spec.verifiable:
                report.note(f"{spec.name}: downloaded but unverified (no size or checksum pinned)", "warning")
            return final
    tried = ", ".join(failures)
    raise DownloadError(f"{spec.name}: download failed from every mirror: {tried}; {_FIX}")


@contextlib.contextmanager
def _exclusive(dest: Path, spec: FileSpec) -> Iterator[None]:
    """Hold a lock so two processes never write the same ``.part`` at once."""
    lock = filelock.FileLock(str(dest / f".{spec.name}.lock"), timeout=0)
    try:
        lock.acquire()
    except filelock.Timeout as exc:
        raise DownloadError(
            f"{dest / spec.name}: another spmlbench process is downloading this file; "
            "wait for it to finish, then run the command again"
        ) from exc
    try:
        yield
    finally:
        lock.release()


def _check_space(dest: Path, spec: FileSpec, part: Path) -> None:
    if spec.size is None:
        return
    have = part.stat().st_size if part.is_file() else 0
    need = max(spec.size - have, 0) + SPACE_MARGIN
    free = shutil.disk_usage(dest).free
    if free < need:
        raise DownloadError(
            f"{dest}: {spec.name} needs {need / 2**30:.1f} GiB free but only {free / 2**30:.1f} GiB are; "
            "free some space or point SPMLBENCH_HOME (or --home) at a larger disk"
        )


def _download_verified(url: str, spec: FileSpec, part: Path, report: Reporter, timeout: float) -> None:
    """Complete ``part`` from ``url`` and verify it; a resumed file that fails is retried once from zero."""
    for attempt in range(2):
        resumed_from = part.stat().st_size if part.is_file() else 0
        hashers = _stream(url, spec, part, report, timeout)
        problem = _mismatch(spec, hashers.size, hashers.md5.hexdigest(), hashers.sha256.hexdigest())
        if problem is None:
            return
        part.unlink(missing_ok=True)
        if resumed_from == 0 or attempt == 1:
            raise _UrlFailed(f"{problem}; the bad download was deleted", keep_part=False)
        # The mismatch may come from an old .part (another mirror, another version): start over once.


def _stream(url: str, spec: FileSpec, part: Path, report: Reporter, timeout: float) -> _Hashers:
    """Append the rest of ``url`` to ``part`` (resuming after interruptions); return the hashes of the whole file."""
    stalls = 0
    hashers: _Hashers | None = None
    while True:
        offset = part.stat().st_size if part.is_file() else 0
        if spec.size is not None and offset > spec.size:
            part.unlink()
            offset = 0
        if hashers is None or hashers.size != offset:  # hash an existing prefix once, not per retry
            hashers = _Hashers.new()
            if offset:
                hashers.update_from_file(part)
        if offset and spec.size is not None and offset == spec.size:
            return hashers  # a previous run got every byte but stopped before the rename
        resp = _open(url, offset, timeout)
        if resp is None:  # 416: the server has no bytes after offset
            if spec.size is None:
                return hashers
            part.unlink(missing_ok=True)
            stalls += 1
            if stalls >= MAX_RETRIES_WITHOUT_PROGRESS:
                raise _UrlFailed("HTTP 416 Range Not Satisfiable")
            continue
        with resp:
            offset, total = _start_offset(resp, offset, spec)
            if offset == 0:
                hashers = _Hashers.new()
            with report.task(f"{spec.name} ({_host(url)})", total, "bytes", completed=offset) as advance:
                got, error = _copy_body(resp, part, offset, spec, hashers, advance)
        if error is None and (total is None or offset + got >= total):
            return hashers
        reason = f"connection lost after {offset + got} bytes ({error or 'body ended early'})"
        stalls = 0 if got > 0 else stalls + 1
        if stalls >= MAX_RETRIES_WITHOUT_PROGRESS:
            raise _UrlFailed(reason)
        time.sleep(0.5 * stalls)
        # made progress or not yet given up: resume from the bytes we have


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """Open ``url`` asking for bytes from ``offset``; None means HTTP 416 (nothing left)."""
    if not re.match(r"https?://", url):
        raise _UrlFailed("not an http(s) URL")
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (scheme checked above)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return None
        raise _UrlFailed(f"HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        text = getattr(reason, "strerror", None) or str(reason)
        raise _UrlFailed(text) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise _UrlFailed(f"{type(exc).__name__}: {exc}") from exc


def _start_offset(resp: http.client.HTTPResponse, offset: int, spec: FileSpec) -> tuple[int, int | None]:
    """Return (offset the body starts at, total file size if known) after checking the response."""
    status = resp.status
    length = resp.headers.get("Content-Length")
    if status == 206 and offset:
        match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", resp.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != offset:
            raise _UrlFailed(f"bad Content-Range {resp.headers.get('Content-Range')!r} for a resume at {offset}")
        total = None if match.group(3) == "*" else int(match.group(3))
    elif status == 200:
        offset = 0  # no Range asked, or the server ignored it: start over
        total = int(length) if length and length.isdigit() else None
    else:
        raise _UrlFailed(f"unexpected HTTP {status}")
    if total is not None and spec.size is not None and total != spec.size:
        raise _UrlFailed(f"server has {total} bytes, expected {spec.size} (another file or version)")
    return offset, total if total is not None else spec.size


def _copy_body(
    resp: http.client.HTTPResponse,
    part: Path,
    offset: int,
    spec: FileSpec,
    hashers: _Hashers,
    advance: Callable[[float], None],
) -> tuple[int, str | None]:
    """Stream the body into ``part`` (appending at ``offset``); return (bytes written, read error or None)."""
    got = 0
    error: str | None = None
    try:
        fh = part.open("r+b" if offset else "wb")
    except OSError as exc:
        raise DownloadError(f"{part}: cannot write ({exc.strerror}); check permissions or choose another --home") from exc
    with fh:
        fh.seek(offset)
        fh.truncate()
        while True:
            try:
                chunk = resp.read(CHUNK)
            except (OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                break
            if not chunk:
                break
            if spec.size is not None and offset + got + len(chunk) > spec.size:
                raise _UrlFailed(f"server sent more than the expected {spec.size} bytes", keep_part=False)
            try:
                fh.write(chunk)
            except OSError as exc:
                raise DownloadError(
                    f"{part}: cannot write ({exc.strerror}); free disk space or choose another --home"
                ) from exc
            hashers.update(chunk)
            got += len(chunk)
            advance(len(chunk))
    return got, error


def _host(url: str) -> str:
    match = re.match(r"https?://([^/]+)", url)
    return match.group(1) if match else url
