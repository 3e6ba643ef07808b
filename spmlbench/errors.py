"""User-facing errors: one line naming the file (or thing), the problem and the fix."""

from __future__ import annotations

import errno
import os
import re


class SpmlError(Exception):
    """An error caused by user input or environment, shown as one line with exit code 2.

    Build the message as ``"<file or thing>: <problem>; <fix>"`` so a user knows what to do.
    """

    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


class ConfigError(SpmlError, ValueError):
    """An invalid option, hyperparameter or spec value (unknown name, out of range)."""


class DataError(SpmlError):
    """A missing, corrupt or malformed data file (checksum, annotation, missing prepare step)."""


class LossError(SpmlError):
    """A loss's own code raised, or gave a value of the wrong shape: fails that loss's jobs only (the other
    losses of the cohort train on). ``loss`` names it; the message names its file and line."""

    def __init__(self, message: str, loss: str = "") -> None:
        super().__init__(message)
        self.loss = loss

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # keeps ``loss`` across worker processes
        return type(self), (str(self), self.loss)


class DownloadError(DataError):
    """A download that could not be completed from any mirror."""


_OS_FIXES = {
    errno.EACCES: "not permitted; fix its permissions or choose another path (--out, --home)",
    errno.EPERM: "not permitted; fix its permissions or choose another path (--out, --home)",
    errno.EROFS: "read-only file system; choose a writable path (--out, --home)",
    errno.ENOSPC: "no space left on the device; free space or choose another path (--out, --home)",
    errno.EDQUOT: "disk quota exceeded; free space or choose another path (--out, --home)",
    errno.ENOTDIR: "a file stands where a folder is expected; remove it or choose another path",
    errno.EEXIST: "a file stands where a folder is expected; remove it or choose another path",
    errno.EISDIR: "a folder stands where a file is expected; remove it or choose another path",
    errno.ENOENT: "no such file or folder; check the path",
    errno.EFBIG: "file too large for this process's limit (ulimit -f) or the file system; raise the limit or "
                 "choose another path (--out, --home)",
}


def with_path(exc: OSError, path: object) -> OSError:
    """``exc`` naming ``path`` when it names no file (pyarrow's "Error writing bytes ... [errno 28]" names
    none): a new OSError with the errno read from its text; ``exc`` itself when it names a file."""
    if exc.filename is not None:
        return exc
    code = exc.errno
    if code is None:
        found = re.search(r"\[errno (\d+)\]", str(exc), re.I)
        code = int(found.group(1)) if found else None
    what = os.strerror(code) if code else (exc.strerror or " ".join(str(exc).split()))
    return OSError(code, what, str(path))


def os_error_message(exc: OSError) -> str:
    """One line for an environment error: ``<path>: <what the OS said>; <fix>``."""
    where = exc.filename if exc.filename is not None else "a file operation"
    fix = _OS_FIXES.get(exc.errno or -1, "check the path, its permissions and the free disk space")
    what = exc.strerror or type(exc).__name__
    return " ".join(f"{where}: {what} ({fix})".split())
