"""What was popular recently, as of any moment: interactions per item and per day.

Counts are kept per (day, item) over the data a stage was built from, so a request asks "how often
was each item taken up in the `window_days` before now" for any now (a replay of a past moment, or
today), instead of the whole history's order, which shows what was popular years ago.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

DAY_S = 86_400
COUNTS_FILE = "popularity.npz"
# Events counted at once by from_events (about 40 bytes each while a chunk becomes counts).
EVENTS_PER_CHUNK = 1 << 20


class ItemPopularity:
    """Daily interaction counts [days, N + 1] (column 0 unused) from day `first_day` (days since
    the epoch) on."""

    def __init__(self, daily: sp.csr_matrix, first_day: int) -> None:
        self.daily = daily.tocsr()
        self.first_day = int(first_day)

    @classmethod
    def from_events(cls, items: np.ndarray, times: np.ndarray, num_items: int) -> ItemPopularity:
        """`items`: item rows (1..N); `times`: event times in seconds. Counted EVENTS_PER_CHUNK events
        at a time: the day and index arrays of a chunk are the only per-event copies, whatever the
        number of events (counts are whole numbers in float32, exact below 2**24 in any order)."""
        if len(items) == 0:
            return cls(sp.csr_matrix((1, num_items + 1)), 0)
        first = int(np.floor(np.min(times) / DAY_S))
        shape = (int(np.floor(np.max(times) / DAY_S)) - first + 1, num_items + 1)
        daily = sp.csr_matrix(shape, dtype=np.float32)
        for start in range(0, len(items), EVENTS_PER_CHUNK):
            days = np.floor(np.asarray(times[start:start + EVENTS_PER_CHUNK], np.float64) / DAY_S).astype(np.int64)
            rows = np.asarray(items[start:start + EVENTS_PER_CHUNK], np.int64)
            daily = daily + sp.csr_matrix((np.ones(len(rows), np.float32), (days - first, rows)), shape=shape)
        return cls(daily, first)

    @property
    def num_items(self) -> int:
        return self.daily.shape[1] - 1

    def counts(self, now: np.ndarray, window_days: float | None) -> np.ndarray:
        """[len(now), N]: each item's interactions in the `window_days` days before each moment
        (seconds; whole days, the day of `now` excluded); None: every day before."""
        days = self.daily.shape[0]
        end = np.clip(np.floor(np.asarray(now, np.float64) / DAY_S).astype(np.int64) - self.first_day, 0, days)
        start = np.zeros_like(end) if window_days is None else np.clip(end - int(np.ceil(window_days)), 0, days)
        out = np.zeros((len(end), self.num_items), dtype=np.float32)
        # Moments on the same day share one sum over the daily rows.
        for (first, last), rows in _group_rows(start, end).items():
            if last > first:
                out[rows] = np.asarray(self.daily[first:last].sum(axis=0)).ravel()[1:]
        return out

    def scores(self, now: np.ndarray, window_days: float | None) -> np.ndarray:
        """log(1 + counts): the popularity term of a blend."""
        return np.log1p(self.counts(now, window_days)).astype(np.float32)

    def save(self, directory: str | Path) -> None:
        sp.save_npz(Path(directory) / COUNTS_FILE, self.daily, compressed=True)

    @classmethod
    def load(cls, directory: str | Path, first_day: int) -> ItemPopularity:
        return cls(sp.load_npz(Path(directory) / COUNTS_FILE), first_day)


def _group_rows(start: np.ndarray, end: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    pairs = np.stack([start, end], axis=1)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return {(int(a), int(b)): np.flatnonzero(inverse.ravel() == i) for i, (a, b) in enumerate(unique)}
