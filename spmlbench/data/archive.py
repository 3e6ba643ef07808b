"""Safe extraction of tar (any compression) and zip archives.

Every member is checked before it is written: absolute names, ``..`` components, links whose
target resolves outside the destination (following links already extracted), device files and
FIFOs are refused with a DataError naming the archive and the member. Extraction goes into a
temporary folder beside the destination and is renamed into place at the end, so nothing
half-extracted ever sits under the final name.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from spmlbench.errors import DataError
from spmlbench.progress import Reporter, Sink

_CHUNK = 1 << 20
_CORRUPT = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError)


def safe_extract(archive: str | os.PathLike[str], dest: str | os.PathLike[str], *, progress: Sink | None = None) -> Path:
    """Extract ``archive`` (tar, tar.gz/bz2/xz, zip) into ``dest`` safely and atomically; return ``dest``.

    If ``dest`` does not exist it appears only once extraction succeeded. If it is an existing
    folder, the archive's top-level entries are moved into it at the end (e.g. COCO's three zips
    into one folder); an entry that already exists there raises DataError before anything moves.
    Unsafe members raise DataError naming the archive and the member; nothing is left behind.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"{archive}: archive not found; check the path (or download it again)")
    if dest.exists() and not dest.is_dir():
        raise DataError(f"{dest}: exists and is not a folder; remove it or extract elsewhere")
    merge_into = dest if dest.is_dir() else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extracting", dir=dest.parent))
    try:
        total = archive.stat().st_size
        with Reporter(progress).task(f"extracting {archive.name}", total, "bytes", transient=True) as advance:
            if _is_tar(archive):
                _extract_tar(archive, tmp, merge_into, advance)
            elif zipfile.is_zipfile(archive):
                _extract_zip(archive, tmp, merge_into, advance)
            else:
                raise DataError(
                    f"{archive}: not a tar or zip archive; check the file (download it again or pass the right --from)"
                )
        if merge_into is None:
            os.rename(tmp, dest)
        else:
            _merge(archive, tmp, merge_into)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_tar(archive: Path) -> bool:
    try:
        return tarfile.is_tarfile(archive)
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        return False


def _refuse(archive: Path, member: str, why: str) -> DataError:
    return DataError(
        f"{archive}: unsafe member {member!r} ({why}); refusing to extract anything: "
        "the archive is corrupt or malicious, download it again from an official mirror"
    )


def _name_problem(name: str) -> str | None:
    """Why ``name`` may not be written below the destination, or None."""
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "'..' component"
    if "\x00" in name:
        return "NUL byte in the name"
    return None


def _check_name(archive: Path, name: str) -> None:
    problem = _name_problem(name)
    if problem is not None:
        raise _refuse(archive, name, problem)


def _inside(root: str, path: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _check_target(archive: Path, root: str, name: str) -> str:
    """Return the real path ``name`` will be written to; refuse it if that is outside ``root``."""
    real = os.path.realpath(os.path.join(root, name))
    if not _inside(root, real):
        raise _refuse(archive, name, "resolves outside the destination through a link")
    return real


def _check_symlink(archive: Path, root: str, name: str, linkname: str) -> None:
    if os.path.isabs(linkname) or linkname.startswith("\\") or re.match(r"[A-Za-z]:", linkname):
        raise _refuse(archive, name, f"symlink to absolute path {linkname!r}")
    target = os.path.realpath(os.path.join(root, os.path.dirname(name), linkname))
    if not _inside(root, target):
        raise _refuse(archive, name, f"symlink to {linkname!r} points outside the destination")


def _check_conflict(archive: Path, name: str, merge_into: Path | None) -> None:
    if merge_into is None:
        return
    parts = [p for p in re.split(r"[/\\]", name) if p not in ("", ".")]
    if parts and os.path.lexists(merge_into / parts[0]):
        raise DataError(
            f"{archive}: {merge_into / parts[0]} already exists (extracted before?); "
            "delete it to extract this archive again"
        )


def _extract_tar(archive: Path, tmp: Path, merge_into: Path | None, advance: Callable[[float], None]) -> None:
    root = os.path.realpath(tmp)
    with archive.open("rb") as raw:
        reader = _CountingReader(raw, advance)
        try:
            with tarfile.open(fileobj=reader, mode="r|*") as tar:  # type: ignore[call-overload]
                for member in tar:
                    _check_tar_member(archive, root, member)
                    _check_conflict(archive, member.name, merge_into)
                    try:
                        tar.extract(member, root, filter="data")
                    except tarfile.FilterError as exc:
                        raise _refuse(archive, member.name, str(exc)) from exc
        except DataError:
            raise
        except _CORRUPT as exc:
            raise _unreadable(archive, tmp, exc) from exc


def _unreadable(archive: Path, tmp: Path, exc: BaseException) -> DataError:
    """A DataError for a failure while reading ``archive``: a full/read-only disk or a corrupt file."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
        return DataError(
            f"{tmp.parent}: cannot write while extracting {archive.name} ({exc.strerror}); "
            "free disk space or fix permissions, then run again"
        )
    return DataError(
        f"{archive}: corrupt or truncated archive ({type(exc).__name__}: {exc}); "
        "download it again (or check the file given to --from)"
    )


def _check_tar_member(archive: Path, root: str, member: tarfile.TarInfo) -> None:
    name = member.name
    _check_name(archive, name)
    if member.ischr() or member.isblk():
        raise _refuse(archive, name, "device file")
    if member.isfifo():
        raise _refuse(archive, name, "FIFO")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise _refuse(archive, name, f"unsupported member type {member.type!r}")
    _check_target(archive, root, name)
    if member.issym():
        _check_symlink(archive, root, name, member.linkname)
    elif member.islnk():
        problem = _name_problem(member.linkname)
        if problem is not None:
            raise _refuse(archive, name, f"hard link to {member.linkname!r}: {problem}")
        if not _inside(root, os.path.realpath(os.path.join(root, member.linkname))):
            raise _refuse(archive, name, f"hard link to {member.linkname!r} points outside the destination")


def _extract_zip(archive: Path, tmp: Path, merge_into: Path | None, advance: Callable[[float], None]) -> None:
    root = os.path.realpath(tmp)
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _extract_zip_member(archive, root, zf, info, merge_into)
                advance(info.compress_size)
    except DataError:
        raise
    except _CORRUPT as exc:
        raise _unreadable(archive, tmp, exc) from exc


def _extract_zip_member(
    archive: Path, root: str, zf: zipfile.ZipFile, info: zipfile.ZipInfo, merge_into: Path | None
) -> None:
    name = info.filename
    _check_name(archive, name)
    mode = info.external_attr >> 16
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        raise _refuse(archive, name, "device file or FIFO")
    _check_conflict(archive, name, merge_into)
    target = _check_target(archive, root, name)
    if stat.S_ISLNK(mode):
        linkname = zf.read(info).decode("utf-8", errors="strict")
        _check_symlink(archive, root, name, linkname)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.symlink(linkname, target)
    elif info.is_dir():
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK)


def _merge(archive: Path, tmp: Path, dest: Path) -> None:
    """Move the top-level entries of ``tmp`` into ``dest``; refuse before moving if any exists."""
    entries = sorted(tmp.iterdir())
    for entry in entries:
        if os.path.lexists(dest / entry.name):
            raise DataError(
                f"{archive}: {dest / entry.name} already exists (extracted before?); "
                "delete it to extract this archive again"
            )
    for entry in entries:
        os.rename(entry, dest / entry.name)


class _CountingReader:
    """A read-only file wrapper that reports the bytes read."""

    def __init__(self, raw: BinaryIO, advance: Callable[[float], None]) -> None:
        self._raw = raw
        self._advance = advance

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._advance(len(data))
        return data
