"""Long loops show progress as their reader wants it: a bar on a terminal, a log line every
PERIOD_S seconds anywhere else (never a bar redrawn into one long line of a log file)."""

from __future__ import annotations

import io
import logging

from feature_store import progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_without_a_terminal_progress_is_a_log_line_per_period(monkeypatch, caplog):
    monkeypatch.setattr(progress, "PERIOD_S", 0.0)
    stream = io.StringIO()
    with caplog.at_level(logging.INFO, logger="feature_store.progress"):
        assert list(progress.with_progress(range(3), "ingest events", "chunk", stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == ["ingest events: 1 of 3 chunks", "ingest events: 2 of 3 chunks",
                                                         "ingest events: 3 of 3 chunks"]


def test_on_a_terminal_progress_is_a_bar_and_disabled_progress_is_nothing(caplog):
    terminal = _Terminal()
    assert list(progress.with_progress(iter(range(2)), "training set", "bucket", stream=terminal)) == [0, 1]
    assert "training set" in terminal.getvalue() and not caplog.records
    quiet = _Terminal()
    assert list(progress.with_progress(range(2), "training set", "bucket", enabled=False, stream=quiet)) == [0, 1]
    assert quiet.getvalue() == ""
