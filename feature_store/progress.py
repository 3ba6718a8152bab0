"""Progress of a long loop as a person at a terminal and a log file both want it: a tqdm bar on a
terminal; anywhere else (a pipe, a log file, CI) one log line every PERIOD_S seconds, never a bar
redrawn into one long line."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

logger = logging.getLogger(__name__)

PERIOD_S = 10.0
T = TypeVar("T")


def with_progress(items: Iterable[T], desc: str, unit: str, *, total: int | None = None, enabled: bool = True,
             stream: TextIO | None = None) -> Iterator[T]:
    """Yields `items`, showing how far the loop is (nothing when not `enabled`)."""
    if not enabled:
        yield from items
        return
    stream = stream or sys.stderr
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if stream.isatty():
        from tqdm.auto import tqdm

        yield from tqdm(items, desc=desc, unit=unit, total=total, file=stream)
        return
    last, done = time.monotonic(), 0
    for item in items:
        yield item
        done += 1
        if time.monotonic() - last >= PERIOD_S:
            last = time.monotonic()
            logger.info("%s: %s %s%s", desc, f"{done:,}", f"of {total:,} " if total is not None else "", unit + "s")
