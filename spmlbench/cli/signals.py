"""Ctrl-C and SIGTERM as an exception the CLI reports: cleanup runs, then one line and exit 130/143.

Click turns ``KeyboardInterrupt`` into a silent abort, and SIGTERM's default action kills the
process without running any ``finally`` (worker processes and locks are left behind). While a
command runs, both signals raise :class:`Interrupted` instead (a ``BaseException``, so no
``except Exception`` swallows it): the worker pool terminates its workers, locks are released,
half-written files are removed by their ``atomic_path``. A second signal during that cleanup gets
the signal's default behaviour.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was interrupted by ``signum`` (SIGINT or SIGTERM)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal."""
        return 128 + self.signum


def _default(signum: int) -> object:
    return signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL


@contextlib.contextmanager
def interrupts_as_exceptions() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM raise :class:`Interrupted` once (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        for s in SIGNALS:
            signal.signal(s, _default(s))  # a second signal is not caught: it ends the process plainly
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
