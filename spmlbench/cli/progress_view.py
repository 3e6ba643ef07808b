"""The CLI's drawing of library progress events (``spmlbench.progress``): rich bars and notes on stderr."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from spmlbench.progress import Event, Note, Sink, TaskAdvance, TaskEnd, TaskStart, Unit


class _ImageRate(ProgressColumn):
    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text("-- img/s" if speed is None else f"{speed:,.1f} img/s")


def _columns(unit: Unit) -> list[ProgressColumn]:
    head: list[ProgressColumn] = [TextColumn("[bold]{task.description}"), BarColumn()]
    if unit == "bytes":
        return [*head, DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
    if unit == "images":
        return [*head, MofNCompleteColumn(), _ImageRate(), TimeRemainingColumn()]
    return [*head, MofNCompleteColumn(), TimeRemainingColumn()]


class RichProgressSink:
    """A :data:`~spmlbench.progress.Sink` drawing each task as a rich bar (one live display per task)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bars: dict[object, tuple[Progress, TaskID]] = {}

    def __call__(self, event: Event) -> None:
        if isinstance(event, TaskStart):
            bar = Progress(*_columns(event.unit), console=self.console, transient=event.transient)
            task = bar.add_task(event.description, total=event.total, completed=event.completed)
            bar.start()
            self._bars[event.key] = (bar, task)
        elif isinstance(event, TaskAdvance):
            if event.key in self._bars:
                bar, task = self._bars[event.key]
                bar.advance(task, event.amount)
        elif isinstance(event, TaskEnd):
            if event.key in self._bars:
                self._bars.pop(event.key)[0].stop()
        elif isinstance(event, Note):
            style = "yellow" if event.level == "warning" else None
            self.console.print(event.text, style=style, markup=False, highlight=False, soft_wrap=True)


def progress_sink(enabled: bool = True) -> Sink | None:
    """The CLI's progress sink, or None (draw nothing) when ``enabled`` is False (``--quiet``)."""
    return RichProgressSink() if enabled else None
