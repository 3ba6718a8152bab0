"""Leave-last-out ranking candidates: each user's latest positive row of a task, then the same row
with the item side replaced by sampled items the user never interacted with.

The held-out row itself is the context (its history holds only earlier events, so nothing leaks);
negatives take each item's latest known item-side features from the prepared dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from grec import InputSpec
from recommend.rows import fold_latest_rows

GROUP = "_rank_group"  # index of the held-out row within its task's candidates
POSITION = "_rank_position"  # 0: the held-out positive, 1..negatives: sampled items
TASK = "_rank_task"


def item_side_columns(spec: InputSpec) -> list[str]:
    """Raw columns that describe the candidate item (spec source 'item'), the item key first."""
    names = [spec.item_id] if spec.item_id else []
    for group in (spec.categorical, spec.numeric, spec.text):
        names += [f.name for f in group if f.source == "item" and f.name not in names]
    return names


def item_catalogue(rows: pa.Table, spec: InputSpec) -> pa.Table:
    """One row per item: its item-side columns from its latest row in `rows`."""
    catalogue = LatestItems(spec)
    catalogue.add(rows)
    return catalogue.table()


class LatestItems:
    """`item_catalogue` folded over batches given in row order: each item's latest row so far, ties
    kept by the earlier row, as one sort of every row would keep them."""

    def __init__(self, spec: InputSpec) -> None:
        self.spec = spec
        self.columns = item_side_columns(spec)
        self._latest: pa.Table | None = None

    def add(self, batch: pa.Table) -> None:
        rows = batch.select(self.columns + [self.spec.timestamp])
        self._latest = fold_latest_rows(self._latest, rows, self.spec.item_id, self.spec.timestamp, ties="earlier")

    def table(self) -> pa.Table:
        """One row per item, latest first."""
        if self._latest is None:
            raise ValueError("no rows were added")
        return self._latest.select(self.columns)


def latest_positive_rows(rows: pa.Table, spec: InputSpec, label: str, max_users: int, seed: int) -> np.ndarray:
    """Indices into `rows` of each user's latest row with a positive `label`, for at most `max_users`
    users drawn at random (seeded)."""
    latest = LatestPositives(spec, label)
    latest.add(rows, 0)
    return latest.chosen(max_users, seed)


class LatestPositives:
    """`latest_positive_rows` folded over batches given in row order (`offset`: the batch's first
    row in that order): holds one row number per user, so it grows with users, not events."""

    def __init__(self, spec: InputSpec, label: str) -> None:
        self.spec, self.label = spec, label
        self._users: np.ndarray | None = None
        self._times = np.zeros(0, dtype=np.int64)
        self._rows = np.zeros(0, dtype=np.int64)

    def add(self, batch: pa.Table, offset: int) -> None:
        positive = np.flatnonzero(batch.column(self.label).to_numpy(zero_copy_only=False) > 0.5)
        if len(positive) == 0:
            return
        taken = pa.array(positive)
        users = batch.column(self.spec.user_id).take(taken).to_numpy(zero_copy_only=False)
        times = pc.cast(batch.column(self.spec.timestamp), pa.int64()).take(taken).to_numpy()
        if self._users is not None:
            users = np.concatenate([self._users, users])
        times, rows = np.concatenate([self._times, times]), np.concatenate([self._rows, positive + offset])
        order = np.lexsort((times, users))  # by user, then time, then row: each user's last entry is the latest
        last_of_user = order[np.r_[users[order][1:] != users[order][:-1], True]]
        self._users, self._times, self._rows = users[last_of_user], times[last_of_user], rows[last_of_user]

    def chosen(self, max_users: int, seed: int) -> np.ndarray:
        """Row numbers of the latest positives of at most `max_users` users drawn at random (seeded)."""
        chosen = self._rows  # ordered by user
        if len(chosen) > max_users:
            chosen = np.sort(np.random.default_rng(seed).choice(chosen, max_users, replace=False))
        return chosen


@dataclass(frozen=True)
class Candidates:
    rows: pa.Table  # held-out rows then negatives, with GROUP, POSITION and TASK columns
    users: int
    skipped_users: int  # users with fewer never-seen items than `negatives`


def build_candidates(
    task: str,
    held_out: pa.Table,
    catalogue: pa.Table,
    interactions: pa.Table,
    spec: InputSpec,
    negatives: int,
    seed: int,
) -> Candidates:
    """Candidate rows for one task: `held_out` (one row per user) plus `negatives` rows per user whose
    item side is a uniformly sampled catalogue item absent from the user's `interactions`."""
    rng = np.random.default_rng(seed)
    item_ids = catalogue.column(spec.item_id).to_numpy(zero_copy_only=False)
    seen_users = interactions.column(spec.user_id).to_numpy(zero_copy_only=False)
    seen_items = interactions.column(spec.item_id).to_numpy(zero_copy_only=False)
    users = held_out.column(spec.user_id).to_numpy(zero_copy_only=False)
    kept, sampled = [], []
    for row, user in enumerate(users):
        available = np.flatnonzero(~np.isin(item_ids, seen_items[seen_users == user]))
        if len(available) < negatives:
            continue
        kept.append(row)
        sampled.append(rng.choice(available, negatives, replace=False))
    if not kept:
        return Candidates(held_out.slice(0, 0), 0, len(users))
    positives = held_out.take(pa.array(kept))
    groups = np.arange(len(kept))
    negative_rows = positives.take(pa.array(np.repeat(groups, negatives)))
    negative_items = catalogue.take(pa.array(np.concatenate(sampled)))
    for name in item_side_columns(spec):
        index = negative_rows.schema.get_field_index(name)
        negative_rows = negative_rows.set_column(index, name, negative_items.column(name).cast(negative_rows.schema.field(name).type))
    table = pa.concat_tables([positives, negative_rows])
    table = table.append_column(GROUP, pa.array(np.concatenate([groups, np.repeat(groups, negatives)])))
    table = table.append_column(POSITION, pa.array(np.concatenate([np.zeros(len(kept), dtype=np.int64),
                                                                   np.tile(np.arange(1, negatives + 1), len(kept))])))
    table = table.append_column(TASK, pa.array([task] * table.num_rows, pa.string()))
    return Candidates(table, len(kept), len(users) - len(kept))


def score_matrix(groups: np.ndarray, positions: np.ndarray, scores: np.ndarray, negatives: int) -> np.ndarray:
    """[users, 1 + negatives] scores with the held-out positive in column 0, from rows in any order."""
    matrix = np.full((int(groups.max()) + 1, negatives + 1), np.nan)
    matrix[groups, positions] = scores
    return matrix
