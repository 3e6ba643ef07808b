"""Atomic file writes: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from spmlbench.errors import with_path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    On any exception the temporary file is removed and ``target`` is left untouched, so a
    killed or failed writer never leaves a half-written file under the final name.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the final file normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    except OSError as exc:  # a full disk under pyarrow names no file: name the target
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise with_path(exc, target) from exc
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def writable_dir(path: str | os.PathLike[str], flag: str) -> Path:
    """Create folder ``path`` (with parents) and prove it takes a file; ConfigError naming ``flag`` if not.

    Called before work whose output would otherwise be lost at the end (a report printed, then
    a crash on a read-only or full ``--out``).
    """
    from spmlbench.errors import ConfigError, os_error_message

    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{flag} {folder}: cannot write there: {os_error_message(exc)}") from None
    return folder
