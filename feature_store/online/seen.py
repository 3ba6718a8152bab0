"""Per-user seen sets: every item a user interacted with up to the materialization time; and each
user's recent events (the latest items with their times, oldest first), which the recommendation
path's history-based sources read (recommend/stage.py).

Serving removes them from every candidate source, so a user is not offered what they already rated,
watched or bought (unless a request allows repeats). A record holds the user's distinct item ids,
sorted: exact (a false-positive rate of 0, unlike a Bloom filter) and compact enough for a JSON
value (MovieLens-100K's heaviest user, 737 items, is about 3 KB). Membership is a binary search.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.online.base import OnlineStore

# View under which each user's seen set is stored; the record is {"items": [sorted ids]}.
SEEN_VIEW = "seen_items"
_ITEMS = "items"
# View of each user's latest events: {"items": [ids, oldest first], "times_us": [µs since the epoch]}.
RECENT_VIEW = "recent_events"
_TIMES = "times_us"
# Events kept per user: what the history-based sources read (at most 50 positions today) and more.
RECENT_EVENTS = 200


@dataclass(frozen=True)
class SeenItems:
    """A user's seen items as a sorted tuple (ids of one type: ints or strings)."""

    items: tuple[Any, ...] = ()

    def __contains__(self, item: object) -> bool:
        index = bisect.bisect_left(self.items, item) if self._comparable(item) else len(self.items)
        return index < len(self.items) and self.items[index] == item

    def _comparable(self, item: object) -> bool:
        # An int and a str id never match (ids keep their type) and cannot be compared.
        return not self.items or isinstance(item, type(self.items[0])) and not isinstance(item, bool)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items)

    def without(self, candidates: Iterable[Any]) -> list[Any]:
        """`candidates` minus the seen ones, order kept."""
        return [item for item in candidates if item not in self]

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> SeenItems:
        return cls(tuple(record.get(_ITEMS, ()))) if record else cls()


def seen_sets(users: pa.Array | pa.ChunkedArray, items: pa.Array | pa.ChunkedArray) -> tuple[list[Any], list[dict]]:
    """(user keys, records): each user's distinct items, sorted, from aligned event columns."""
    table = pa.table({"user": users, "item": items}).group_by(["user", "item"]).aggregate([])
    table = table.sort_by([("user", "ascending"), ("item", "ascending")])
    user_values = table.column("user").to_pylist()
    item_values = table.column("item").to_pylist()
    codes = pc.rank(table.column("user"), sort_keys="ascending", tiebreaker="dense").to_numpy()
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(codes)]
    keys = [user_values[s] for s in starts]
    return keys, [{_ITEMS: item_values[s:e]} for s, e in zip(starts, ends, strict=True)]


def read_seen(store: OnlineStore, user_id: Any) -> SeenItems:
    """The user's seen set (empty for an unknown user)."""
    return SeenItems.from_record(store.read(SEEN_VIEW, [user_id]).rows[0])


def recent_events(users: list[Any], items: list[Any], times_us: np.ndarray, user_start: np.ndarray,
                  length: int = RECENT_EVENTS) -> tuple[list[Any], list[dict]]:
    """(user keys, records) of each user's last `length` events, from events sorted by (user, time,
    ingestion order) whose users begin at `user_start` (feature_store.history.OrderedEvents)."""
    if len(users) == 0:
        return [], []
    ends = np.r_[np.flatnonzero(user_start[1:] != user_start[:-1]) + 1, len(users)]
    starts = np.r_[0, ends[:-1]]
    keys, records = [], []
    for start, end in zip(starts, ends, strict=True):
        first = max(int(start), int(end) - length)
        keys.append(users[start])
        records.append({_ITEMS: items[first:end], _TIMES: times_us[first:end].tolist()})
    return keys, records


def read_recent(store: OnlineStore, user_id: Any) -> tuple[list[Any], list[float]]:
    """The user's latest items (oldest first) and their times in seconds (empty for an unknown user)."""
    record = store.read(RECENT_VIEW, [user_id]).rows[0] or {}
    return list(record.get(_ITEMS, ())), [t / 1_000_000 for t in record.get(_TIMES, ())]
