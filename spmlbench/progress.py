"""Progress as a stream of events: the library reports what it does, only ``spmlbench.cli`` draws it.

A long-running library function (download, archive extraction, feature extraction) takes
``progress: Sink | None``. It calls the sink with :class:`TaskStart`, then :class:`TaskAdvance`
as work completes, then :class:`TaskEnd`; :class:`Note` carries a one-line message (a resumed
download, a stale cache rebuilt). With no sink nothing is drawn and notes go to the
``spmlbench`` logger, so a notebook stays quiet unless it asks. The CLI's sink
(``spmlbench.cli.progress_view``) turns the events into rich progress bars on stderr.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal, Union

#: What a task counts: ``bytes`` (downloads, archives), ``images`` (feature extraction), ``items``.
Unit = Literal["bytes", "images", "items"]


@dataclass(frozen=True)
class TaskStart:
    """A task begins: ``key`` names it in later events; ``total`` None when unknown."""

    key: object
    description: str
    total: float | None
    unit: Unit = "items"
    completed: float = 0.0
    transient: bool = False


@dataclass(frozen=True)
class TaskAdvance:
    """``amount`` more units of task ``key`` are done."""

    key: object
    amount: float


@dataclass(frozen=True)
class TaskEnd:
    """Task ``key`` is over (finished or abandoned)."""

    key: object


@dataclass(frozen=True)
class Note:
    """A one-line message for the user."""

    text: str
    level: Literal["info", "warning"] = "info"


Event = Union[TaskStart, TaskAdvance, TaskEnd, Note]
Sink = Callable[[Event], None]

_LOG = logging.getLogger("spmlbench")


class Reporter:
    """What a library function holds to emit events; silent (notes logged) without a sink."""

    def __init__(self, sink: Sink | None) -> None:
        self.sink = sink if callable(sink) else None

    def note(self, text: str, level: Literal["info", "warning"] = "info") -> None:
        """Send a one-line message (logged when there is no sink)."""
        if self.sink is None:
            _LOG.log(logging.WARNING if level == "warning" else logging.INFO, text)
        else:
            self.sink(Note(text, level))

    @contextlib.contextmanager
    def task(self, description: str, total: float | None, unit: Unit = "items", *, completed: float = 0.0,
             transient: bool = False) -> Iterator[Callable[[float], None]]:
        """Run a task; yields ``advance(amount)``. The end event is sent even when the body raises."""
        if self.sink is None:
            yield lambda amount: None
            return
        key, sink = object(), self.sink
        sink(TaskStart(key, description, total, unit, completed, transient))
        try:
            yield lambda amount: sink(TaskAdvance(key, amount))
        finally:
            sink(TaskEnd(key))
