"""A prepared dataset's users as the recommendation path sees them when a split begins: what a
fitted stage is tuned on (validation) and what offline evaluation replays (test).

For each user with an event in the split:
- the history: the user's events in the earlier splits, oldest first (ties in the order the split
  protocol used), which is also the seen set the lists leave out;
- `now`: the time of the user's first event in the split (under a global time split, the same
  moment the online store would have been materialized at for a replay, user by user);
- the truth per target: the user's items in the split that are positives of the target's label
  (every event for implicit-feedback tasks);
- the ranker's row: the user's first row of the split (point-in-time features and behavior sequences
  as of that moment, the training set's schema).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.options import SPLITS
from recommend.stage import UserHistory

US_PER_S = 1_000_000


@dataclass(frozen=True)
class Interactions:
    """Every event of a prepared dataset's splits, sorted by (user, time, split, row order)."""

    users: np.ndarray  # raw user ids (object or numeric)
    items: np.ndarray  # raw item ids
    times: np.ndarray  # seconds since the epoch
    splits: np.ndarray  # 0 train, 1 validation, 2 test
    labels: dict[str, np.ndarray]  # label column -> values (NaN where missing)

    def before(self, split: str) -> Interactions:
        return self._take(self.splits < SPLITS.index(split))

    def within(self, splits: tuple[str, ...]) -> Interactions:
        return self._take(np.isin(self.splits, [SPLITS.index(s) for s in splits]))

    def _take(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.users[mask], self.items[mask], self.times[mask], self.splits[mask],
                            {k: v[mask] for k, v in self.labels.items()})

    def user_runs(self) -> list[tuple[Any, int, int]]:
        """(user, start, end) of each user's events, in user order."""
        if len(self.users) == 0:
            return []
        change = np.flatnonzero(self.users[1:] != self.users[:-1]) + 1
        starts = np.r_[0, change]
        ends = np.r_[change, len(self.users)]
        keys = self.users[starts].tolist()  # Python ids (int or str), as JSON and the online store take them
        return [(key, int(s), int(e)) for key, s, e in zip(keys, starts, ends, strict=True)]


def read_interactions(prepared: Any, label_columns: list[str] = ()) -> Interactions:
    """Every split's (user, item, time, labels) of `prepared` (feature_store.prepare.PreparedDataset)."""
    definition = prepared.definition()
    user_key, item_key, time_key = definition.user.join_key, definition.item.join_key, definition.timestamp_field
    tables = []
    for code, split in enumerate(SPLITS):
        try:
            table = prepared.read_split(split, columns=[user_key, item_key, time_key, *label_columns])
        except Exception:  # an empty split (no files)
            continue
        tables.append(table.append_column("_split", pa.array(np.full(table.num_rows, code, dtype=np.int8))))
    table = pa.concat_tables(tables)
    users = table.column(user_key).to_numpy(zero_copy_only=False)
    times = table.column(time_key).cast(pa.int64()).to_numpy() / US_PER_S
    splits = table.column("_split").to_numpy()
    order = np.lexsort((np.arange(table.num_rows), splits, times, _codes(table.column(user_key))))
    labels = {c: np.asarray(pc.cast(table.column(c), pa.float64()).to_numpy(zero_copy_only=False),
                            dtype=np.float64)[order] for c in label_columns}
    return Interactions(users[order], table.column(item_key).to_numpy(zero_copy_only=False)[order], times[order],
                        splits[order], labels)


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    return pc.rank(column, sort_keys="ascending", tiebreaker="dense").to_numpy()


@dataclass(frozen=True)
class SplitUsers:
    """The users of one split (see the module's docstring), aligned by position."""

    split: str
    user_ids: list[Any]
    histories: list[UserHistory]
    truth: dict[str, list[set[Any]]]  # target -> each user's relevant items in the split
    rows: pa.Table  # each user's first row of the split (raw training-set schema)

    @property
    def history_sizes(self) -> np.ndarray:
        return np.array([len(h.items) for h in self.histories], dtype=np.int64)

    def subset(self, positions: list[int]) -> SplitUsers:
        return SplitUsers(self.split, [self.user_ids[i] for i in positions], [self.histories[i] for i in positions],
                          {t: [v[i] for i in positions] for t, v in self.truth.items()},
                          self.rows.take(pa.array(positions, pa.int64())))


def split_users(prepared: Any, split: str, targets: Mapping[str, str | None],
                interactions: Interactions | None = None) -> SplitUsers:
    """`targets`: name -> label column whose positives (value 1) are relevant, None for every event."""
    if split == "train":
        raise ValueError("lists are judged on a split that follows training data: validation or test")
    columns = sorted({c for c in targets.values() if c})
    interactions = interactions or read_interactions(prepared, columns)
    code = SPLITS.index(split)
    user_ids, histories, truth = [], [], {name: [] for name in targets}
    for user, start, end in interactions.user_runs():
        splits = interactions.splits[start:end]
        inside = np.flatnonzero(splits == code)
        if len(inside) == 0:
            continue
        earlier = np.flatnonzero(splits < code)
        items = interactions.items[start:end]
        user_ids.append(user)
        histories.append(UserHistory(items[earlier].tolist(), interactions.times[start:end][earlier].tolist(),
                                     set(items[earlier].tolist()), float(interactions.times[start + inside[0]])))
        for name, column in targets.items():
            positives = inside if column is None else inside[interactions.labels[column][start:end][inside] == 1]
            truth[name].append(set(items[positives].tolist()))
    return SplitUsers(split, user_ids, histories, truth, _first_rows(prepared, split, user_ids))


def _first_rows(prepared: Any, split: str, user_ids: list[Any]) -> pa.Table:
    """Each listed user's first row of the split (rows are stored by user, time, ingestion order)."""
    definition = prepared.definition()
    table = prepared.read_split(split)
    if definition.timestamp_field in table.column_names:
        table = table.sort_by([(definition.user.join_key, "ascending"), (definition.timestamp_field, "ascending")])
    users = table.column(definition.user.join_key).to_numpy(zero_copy_only=False)
    first = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1] if len(users) else np.zeros(0, np.int64)
    by_user = {users[i]: int(i) for i in first}
    return table.take(pa.array([by_user[u] for u in user_ids], pa.int64()))
