"""The CLI draws the library's progress events; the library itself draws nothing."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from spmlbench.cli.progress_view import RichProgressSink, progress_sink
from spmlbench.progress import Note, Reporter, TaskAdvance, TaskEnd, TaskStart


def test_reporter_sends_start_advances_and_end_even_when_the_body_raises() -> None:
    events: list[object] = []
    with pytest.raises(RuntimeError), Reporter(events.append).task("job", 10, "bytes", completed=2) as advance:
        advance(3)
        raise RuntimeError("boom")
    start, step, end = events
    assert start == TaskStart(start.key, "job", 10, "bytes", 2.0, False)
    assert step == TaskAdvance(start.key, 3) and end == TaskEnd(start.key)


def test_reporter_without_a_sink_is_silent_and_logs_notes(caplog: pytest.LogCaptureFixture) -> None:
    report = Reporter(None)
    with report.task("job", 1) as advance:
        advance(1)
    with caplog.at_level(logging.INFO, logger="spmlbench"):
        report.note("cache rebuilt", "warning")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "cache rebuilt")]


def test_rich_sink_draws_bars_and_notes() -> None:
    out = io.StringIO()
    sink = RichProgressSink(Console(file=out, width=100, force_terminal=False))
    key = object()
    sink(TaskStart(key, "voc.tar", 2048, "bytes"))
    sink(TaskAdvance(key, 2048))
    sink(TaskEnd(key))
    sink(Note("voc.tar: downloaded but unverified", "warning"))
    text = out.getvalue()
    assert "voc.tar" in text and "2.0/2.0 kB" in text
    assert text.rstrip().endswith("voc.tar: downloaded but unverified")
    assert not sink._bars  # every bar stopped
    assert progress_sink(False) is None
