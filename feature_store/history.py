"""Ordering of events and feature rows, and behavior-sequence windows.

The training-set builder and the online materialization both use these functions, so a sequence
seen in training and the one served for the same moment are computed by the same code.

Rules (tested in tests/test_feature_store_training_set.py):
- Events are ordered by (user, timestamp, ingestion order). Events of one user at the same instant
  (76% of MovieLens ratings share their second with another of the same user) keep the order in
  which they were ingested, the event sequence, as Feast breaks ties by a created timestamp; an id
  says nothing about which came first.
- Duplicate events (same user, item and timestamp) count once: the copy ingested last is kept, at
  the place of the first copy, so a re-sent event with corrected labels replaces the earlier one.
- A sequence for an event holds only events strictly before its timestamp: events at the same
  instant (the event itself included) are not part of it. A window that cuts through a tie keeps
  the events ingested last.
- Feature rows with the same key and timestamp: the one ingested last is kept.

"Ingestion order" is the row order the offline store returns: earlier ingestions first, and rows in
the order they came within each one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def _codes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Dense codes that sort like the values themselves, so results do not depend on input order."""
    return pc.rank(column, sort_keys="ascending", tiebreaker="dense").to_numpy().astype(np.int64)


def timestamps_us(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Microseconds since the epoch (int64) of a timestamp[us] column."""
    return column.cast(pa.int64()).to_numpy()


def _run_starts(is_start: np.ndarray) -> np.ndarray:
    """For each position, the index where its run began."""
    idx = np.arange(len(is_start))
    return np.maximum.accumulate(np.where(is_start, idx, 0))


@dataclass(frozen=True)
class OrderedEvents:
    """Events without duplicates, sorted by (user, timestamp, ingestion order).

    For row i, rows [user_start[i], prior_end[i]) are that user's events strictly before row i's
    timestamp.
    """

    table: pa.Table
    user_start: np.ndarray
    prior_end: np.ndarray
    timestamps: np.ndarray
    duplicates_dropped: int

    def user_last_rows(self) -> np.ndarray:
        """Index of each user's last event."""
        n = self.table.num_rows
        is_last = np.r_[self.user_start[1:] != self.user_start[:-1], True] if n else np.zeros(0, bool)
        return np.flatnonzero(is_last)


def order_events(events: pa.Table, user_field: str, item_field: str, timestamp_field: str) -> OrderedEvents:
    """Sorts events (given in ingestion order) by (user, timestamp, ingestion order) and drops
    duplicates, keeping the last ingested copy at the first copy's place."""
    n = events.num_rows
    users = _codes(events.column(user_field))
    items = _codes(events.column(item_field))
    ts = timestamps_us(events.column(timestamp_field))
    arrival = np.arange(n)
    # Copies of one event (user, item, timestamp) are adjacent in this order, oldest copy first.
    by_event = np.lexsort((arrival, items, ts, users))
    u, t, i = users[by_event], ts[by_event], items[by_event]
    starts_event = np.r_[True, (u[1:] != u[:-1]) | (t[1:] != t[:-1]) | (i[1:] != i[:-1])] if n else np.zeros(0, bool)
    ends_event = np.r_[starts_event[1:], True] if n else np.zeros(0, bool)
    kept = by_event[ends_event]  # the last ingested copy
    place = by_event[starts_event]  # where the first copy arrived
    perm = kept[np.lexsort((place, ts[kept], users[kept]))]
    u, t = users[perm], ts[perm]
    user_begins = np.r_[True, u[1:] != u[:-1]] if len(u) else np.zeros(0, bool)
    instant_begins = user_begins | (np.r_[True, t[1:] != t[:-1]] if len(t) else np.zeros(0, bool))
    return OrderedEvents(
        table=events.take(perm),
        user_start=_run_starts(user_begins),
        prior_end=_run_starts(instant_begins),
        timestamps=t,
        duplicates_dropped=int(n - len(perm)),
    )


def window_lists(values: pa.ChunkedArray | pa.Array, starts: np.ndarray, ends: np.ndarray,
                 length: int) -> pa.ListArray:
    """For each row, the list values[max(start, end - length):end] (oldest first)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    lo = np.maximum(starts, ends - length)
    lengths = (ends - lo).astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if offsets[-1] >= np.iinfo(np.int32).max:
        raise ValueError("a partition produced more than 2**31 sequence values; use more buckets")
    flat = np.repeat(lo - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values.take(pa.array(flat)))


def history_before(ordered: OrderedEvents, field: str, length: int) -> pa.ListArray:
    """For each event, the user's last `length` values of `field` strictly before it."""
    return window_lists(ordered.table.column(field), ordered.user_start, ordered.prior_end, length)


def latest_history(ordered: OrderedEvents, user_field: str, field: str,
                   length: int) -> tuple[pa.Array, pa.ListArray]:
    """Each user's key and last `length` values of `field` over all events (for serving "now")."""
    last = ordered.user_last_rows()
    keys = ordered.table.column(user_field).take(pa.array(last)).combine_chunks()
    return keys, window_lists(ordered.table.column(field), ordered.user_start[last], last + 1, length)


def dedupe_feature_rows(table: pa.Table, key_field: str, timestamp_field: str) -> pa.Table:
    """Feature rows sorted by (key, timestamp), one per (key, timestamp): the last ingested."""
    n = table.num_rows
    keys = _codes(table.column(key_field))
    ts = timestamps_us(table.column(timestamp_field))
    perm = np.lexsort((np.arange(n), ts, keys))
    k, t = keys[perm], ts[perm]
    keep = np.r_[(k[:-1] != k[1:]) | (t[:-1] != t[1:]), True] if n else np.zeros(0, bool)
    return table.take(perm[keep])


def latest_feature_rows(table: pa.Table, key_field: str, timestamp_field: str) -> pa.Table:
    """Each key's most recent feature row (ties: the last ingested)."""
    deduped = dedupe_feature_rows(table, key_field, timestamp_field)
    keys = _codes(deduped.column(key_field))
    is_last = np.r_[keys[1:] != keys[:-1], True] if len(keys) else np.zeros(0, bool)
    return deduped.filter(pa.array(is_last))
