"""User-facing errors: one line naming the file (or thing), the problem and the fix."""

from __future__ import annotations


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


class DownloadError(DataError):
    """A download that could not be completed from any mirror."""
