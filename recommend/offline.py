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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.options import SPLITS
from recommend.stage import UserHistory

US_PER_S = 1_000_000
# Rows per batch read from a split: what the reads hold at once besides the compact arrays.
READ_BATCH_ROWS = 131_072


@dataclass(frozen=True)
class Interactions:
    """Every event of a prepared dataset's splits, sorted by (user, time, split, row order), held
    compactly: users and items as int32 codes into their distinct raw ids (sorted), times as float64
    seconds, splits as int8, each label as a boolean "is a positive" (value 1). Memory is about
    4 + 4 + 8 + 1 + labels bytes per event; raw ids exist once per distinct user and item."""

    user_codes: np.ndarray  # int32, position in `user_values`
    user_values: np.ndarray  # distinct raw user ids, ascending (Arrow's order)
    item_codes: np.ndarray  # int32, position in `item_values`
    item_values: np.ndarray  # distinct raw item ids, ascending
    times: np.ndarray  # seconds since the epoch (float64)
    splits: np.ndarray  # int8: 0 train, 1 validation, 2 test
    positives: dict[str, np.ndarray]  # label column -> bool (the value is 1)

    @property
    def users(self) -> np.ndarray:
        """Raw user id of each event (materialized on demand)."""
        return self.user_values[self.user_codes]

    @property
    def items(self) -> np.ndarray:
        """Raw item id of each event (materialized on demand)."""
        return self.item_values[self.item_codes]

    def before(self, split: str) -> Interactions:
        return self._take(self.splits < SPLITS.index(split))

    def within(self, splits: tuple[str, ...]) -> Interactions:
        return self._take(np.isin(self.splits, [SPLITS.index(s) for s in splits]))

    def _take(self, mask: np.ndarray) -> Interactions:
        return Interactions(self.user_codes[mask], self.user_values, self.item_codes[mask], self.item_values,
                            self.times[mask], self.splits[mask], {k: v[mask] for k, v in self.positives.items()})

    def run_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of each user's events (CSR offsets), in user order."""
        if len(self.user_codes) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        change = np.flatnonzero(self.user_codes[1:] != self.user_codes[:-1]) + 1
        return np.r_[0, change].astype(np.int64), np.r_[change, len(self.user_codes)].astype(np.int64)

    def user_runs(self) -> list[tuple[Any, int, int]]:
        """(user, start, end) of each user's events, in user order."""
        starts, ends = self.run_bounds()
        keys = self.user_values[self.user_codes[starts]].tolist()  # Python ids (int or str), as JSON takes them
        return [(key, int(s), int(e)) for key, s, e in zip(keys, starts.tolist(), ends.tolist(), strict=True)]


class RunViews(Sequence[np.ndarray]):
    """Each user's run of one per-event array (`values[starts[i]:ends[i]]`, CSR), a view made when
    asked for: a user costs 16 bytes of bounds, where a list of views costs a numpy object (about 120
    bytes) per user. Slicing gives the RunViews of those users."""

    def __init__(self, values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        self.values, self.starts, self.ends = values, starts, ends

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return RunViews(self.values, self.starts[index], self.ends[index])
        return self.values[self.starts[index]:self.ends[index]]  # IndexError past the end ends iteration


class _Codes:
    """Raw ids, batch by batch, as int32 codes into their distinct values in ascending order: each
    batch is dictionary-encoded on arrival (its indices kept, int32), the dictionaries unified at
    the end, so nothing holds a raw id per event."""

    def __init__(self) -> None:
        self._parts: list[tuple[np.ndarray, pa.Array]] = []

    def add(self, column: pa.ChunkedArray | pa.Array) -> None:
        column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        if column.null_count:
            raise ValueError(f"{column.null_count} events have no id")
        encoded = pc.dictionary_encode(column)
        self._parts.append((encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False),
                            encoded.dictionary))

    def finish(self, type_: pa.DataType) -> tuple[np.ndarray, np.ndarray]:
        total = sum(len(indices) for indices, _ in self._parts)
        if not self._parts:
            return np.zeros(0, np.int32), pa.array([], type_).to_numpy(zero_copy_only=False)
        distinct = pc.unique(pa.concat_arrays([d for _, d in self._parts]))
        distinct = distinct.take(pc.sort_indices(distinct))
        codes, at = np.empty(total, np.int32), 0
        while self._parts:  # each batch's indices are released once mapped
            indices, dictionary = self._parts.pop(0)
            mapping = pc.index_in(dictionary, value_set=distinct).to_numpy(zero_copy_only=False).astype(np.int32)
            codes[at:at + len(indices)] = mapping[indices]
            at += len(indices)
        return codes, distinct.to_numpy(zero_copy_only=False)


def read_interactions(prepared: Any, label_columns: Iterable[str] = (),
                      splits: Sequence[str] = SPLITS) -> Interactions:
    """The (user, item, time, positives of each label) of `splits` of `prepared`
    (feature_store.prepare.PreparedDataset), read column-wise batch by batch into compact arrays."""
    definition = prepared.definition()
    label_columns = list(label_columns)
    user_key, item_key, time_key = definition.user.join_key, definition.item.join_key, definition.timestamp_field
    users, items = _Codes(), _Codes()
    times, split_codes, positives = [], [], {c: [] for c in label_columns}
    types: dict[str, pa.DataType] = {}
    for code, split in enumerate(SPLITS):
        if split not in splits:
            continue
        for batch in prepared.iter_split(split, columns=[user_key, item_key, time_key, *label_columns],
                                         batch_size=READ_BATCH_ROWS):
            types.setdefault(user_key, batch.schema.field(user_key).type)
            types.setdefault(item_key, batch.schema.field(item_key).type)
            users.add(batch.column(user_key))
            items.add(batch.column(item_key))
            times.append(batch.column(time_key).cast(pa.int64()).to_numpy() / US_PER_S)
            split_codes.append(np.full(batch.num_rows, code, dtype=np.int8))
            for column in label_columns:
                values = pc.cast(batch.column(column), pa.float64()).to_numpy(zero_copy_only=False)
                positives[column].append(np.asarray(values, dtype=np.float64) == 1)
    user_codes, user_values = users.finish(types.get(user_key, pa.int64()))
    time_values = _concatenate(times, np.float64)
    split_values = _concatenate(split_codes, np.int8)
    # Stable: events of one user at one time in one split keep their row order.
    order = np.lexsort((split_values, time_values, user_codes))
    # Each array is put in order and its unordered copy dropped before the next: one array's worth of
    # copy at a time, not every column's.
    user_codes = user_codes[order]
    time_values = time_values[order]
    split_values = split_values[order]
    item_codes, item_values = items.finish(types.get(item_key, pa.int64()))
    item_codes = item_codes[order]
    ordered = {column: _concatenate(positives.pop(column), bool)[order] for column in label_columns}
    return Interactions(user_codes, user_values, item_codes, item_values, time_values, split_values, ordered)


def _concatenate(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    """`parts` as one array, emptying the list so each part is freed once copied."""
    if not parts:
        return np.zeros(0, dtype)
    out = np.concatenate(parts)
    parts.clear()
    return out


@dataclass(frozen=True)
class SplitUsers:
    """The users of one split (see the module's docstring), aligned by position."""

    split: str
    user_ids: list[Any]
    histories: list[UserHistory]
    truth: dict[str, list[set[Any]]]  # target -> each user's relevant items in the split
    rows: pa.Table  # each user's first row of the split (raw training-set schema)

    def subset(self, positions: list[int]) -> SplitUsers:
        return SplitUsers(self.split, [self.user_ids[i] for i in positions], [self.histories[i] for i in positions],
                          {t: [v[i] for i in positions] for t, v in self.truth.items()},
                          self.rows.take(pa.array(positions, pa.int64())))


def split_runs(interactions: Interactions, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the users with an event in `split`, in user order: the users split_users
    builds, by position."""
    starts, ends = interactions.run_bounds()
    inside = np.add.reduceat(interactions.splits == SPLITS.index(split), starts) > 0 if len(starts) else \
        np.zeros(0, bool)
    return starts[inside], ends[inside]


def relevant_runs(interactions: Interactions, split: str, column: str | None) -> np.ndarray:
    """Positions (in split_runs's order) of the split's users with a relevant event in it: a positive
    of label `column`, any event for None (the users whose truth split_users finds non-empty)."""
    starts, _ = interactions.run_bounds()
    if len(starts) == 0:
        return np.zeros(0, np.int64)
    inside = interactions.splits == SPLITS.index(split)
    relevant = inside if column is None else inside & interactions.positives[column]
    in_split = np.add.reduceat(inside, starts) > 0
    return np.flatnonzero((np.add.reduceat(relevant, starts) > 0)[in_split])


def split_users(prepared: Any, split: str, targets: Mapping[str, str | None],
                interactions: Interactions | None = None, positions: Sequence[int] | None = None) -> SplitUsers:
    """`targets`: name -> label column whose positives (value 1) are relevant, None for every event.
    `positions`: only these of the split's users (ascending positions in user order, see
    split_runs); the others are never built."""
    if split == "train":
        raise ValueError("lists are judged on a split that follows training data: validation or test")
    columns = sorted({c for c in targets.values() if c})
    interactions = interactions or read_interactions(prepared, columns, SPLITS[:SPLITS.index(split) + 1])
    rows = first_rows(prepared, split, split_user_ids(interactions, split, positions))
    return users_of(interactions, split, targets, positions, rows)


def split_runs_at(interactions: Interactions, split: str,
                  positions: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """split_runs of the users at `positions` (every one for None)."""
    starts, ends = split_runs(interactions, split)
    if positions is None:
        return starts, ends
    return starts[np.asarray(positions, np.int64)], ends[np.asarray(positions, np.int64)]


def split_user_ids(interactions: Interactions, split: str, positions: Sequence[int] | None = None) -> list[Any]:
    """Raw ids (Python values) of the split's users at `positions` (every one for None)."""
    starts, _ = split_runs_at(interactions, split, positions)
    return interactions.user_values[interactions.user_codes[starts]].tolist()


def users_of(interactions: Interactions, split: str, targets: Mapping[str, str | None],
             positions: Sequence[int] | None, rows: pa.Table) -> SplitUsers:
    """split_users of the users at `positions` whose first rows (`first_rows`, aligned) are read
    already: a caller working through blocks of users reads the split once."""
    code = SPLITS.index(split)
    starts, ends = split_runs_at(interactions, split, positions)
    user_ids = interactions.user_values[interactions.user_codes[starts]].tolist()  # Python ids
    histories, truth = [], {name: [] for name in targets}
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        splits = interactions.splits[start:end]
        inside = np.flatnonzero(splits == code)
        earlier = np.flatnonzero(splits < code)
        items = interactions.item_values[interactions.item_codes[start:end]]
        histories.append(UserHistory(items[earlier].tolist(), interactions.times[start:end][earlier].tolist(),
                                     set(items[earlier].tolist()), float(interactions.times[start + inside[0]])))
        for name, column in targets.items():
            positives = inside if column is None else inside[interactions.positives[column][start:end][inside]]
            truth[name].append(set(items[positives].tolist()))
    return SplitUsers(split, user_ids, histories, truth, rows)


def first_rows(prepared: Any, split: str, user_ids: list[Any]) -> pa.Table:
    """Each listed user's first row of the split (rows are stored by user, time, ingestion order):
    the split streamed batch by batch, holding at most one row per listed user."""
    definition = prepared.definition()
    key, time_field = definition.user.join_key, definition.timestamp_field
    wanted = pa.array(user_ids) if user_ids else None
    first: pa.Table | None = None
    for batch in prepared.iter_split(split, batch_size=READ_BATCH_ROWS):
        if wanted is None:
            break
        batch = batch.filter(pc.is_in(batch.column(key), value_set=wanted.cast(batch.schema.field(key).type)))
        if batch.num_rows == 0:
            continue
        rows = batch if first is None else pa.concat_tables([first, batch])
        if time_field in rows.column_names:  # stable: of rows at one time the earlier (held rows first) wins
            rows = rows.sort_by([(time_field, "ascending")])
        _, chosen = np.unique(rows.column(key).to_numpy(zero_copy_only=False), return_index=True)
        first = rows.take(pa.array(np.sort(chosen)))
    if first is None:  # no listed user: the split's columns, no rows
        return next(iter(prepared.iter_split(split, batch_size=1))).slice(0, 0)
    by_user = {user: index for index, user in enumerate(first.column(key).to_pylist())}
    return first.take(pa.array([by_user[u] for u in user_ids], pa.int64()))
