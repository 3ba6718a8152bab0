"""The ranker's rows for candidates when the user's row is already built (offline: the user's first
row of a split; the batch job: the online store's row): the user's columns repeated per candidate,
the item columns (item key and item features) of each candidate from an item table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from feature_store.definitions import DatasetDefinition
from recommend.recommender import TaskScorer

# The probability of a binary task is clipped this far from 0 and 1 before its logit is taken.
LOGIT_EPSILON = 1e-6


def item_columns(definition: DatasetDefinition) -> list[str]:
    """The columns of a raw row that describe the candidate item."""
    return [definition.item.join_key, *(f.name for view in definition.views_of(definition.item) for f in view.features)]


def fold_latest_rows(latest: pa.Table | None, batch: pa.Table, key: str, time_field: str | None, *,
                     ties: str) -> pa.Table:
    """Each `key`'s latest row among `latest` (this fold's result over the rows before `batch`) and
    `batch`: the row with the greatest `time_field` (None or absent: the last row); of rows at one
    time the earlier in row order wins (`ties` "earlier", rows returned latest first) or the later
    ("later", rows returned earliest first). Arrow's sort is stable and a key's held row precedes
    its rows in `batch`, so row order needs no column of its own."""
    if ties not in ("earlier", "later"):
        raise ValueError(f"ties must be 'earlier' or 'later', got {ties!r}")
    rows = batch if latest is None else pa.concat_tables([latest, batch])
    if time_field in rows.column_names:
        rows = rows.sort_by([(time_field, "descending" if ties == "earlier" else "ascending")])
    ids = rows.column(key).to_numpy(zero_copy_only=False)
    if ties == "earlier":
        _, chosen = np.unique(ids, return_index=True)
    else:
        _, first_from_end = np.unique(ids[::-1], return_index=True)
        chosen = len(ids) - 1 - first_from_end
    return rows.take(pa.array(np.sort(chosen)))


def latest_item_rows(batches: Iterable[pa.Table], definition: DatasetDefinition) -> pa.Table:
    """Each item's latest row (every column), the row ItemRows keeps of it, folded over `batches` given
    in row order: it holds one row per item, never a whole split. Of two rows at one time the later
    wins, as in ItemRows's stable sort."""
    latest: pa.Table | None = None
    for batch in batches:
        latest = fold_latest_rows(latest, batch, definition.item.join_key, definition.timestamp_field, ties="later")
    if latest is None:
        raise ValueError("no rows to take item features from")
    return latest


class ItemRows:
    """One row of item columns per item (its latest features), by raw item id."""

    def __init__(self, rows: pa.Table, definition: DatasetDefinition) -> None:
        columns = item_columns(definition)
        key = definition.item.join_key
        ordered = rows.select([*columns, *([definition.timestamp_field] if definition.timestamp_field in
                                           rows.column_names else [])])
        if definition.timestamp_field in ordered.column_names:
            ordered = ordered.sort_by([(definition.timestamp_field, "ascending")])
        ids = ordered.column(key).to_pylist()
        latest = {item: index for index, item in enumerate(ids)}  # the last (latest) row of each item wins
        self.table = ordered.select(columns).take(pa.array(list(latest.values()), pa.int64()))
        self.position = {item: index for index, item in enumerate(latest)}
        self.columns = columns

    def take(self, items: Sequence[Any]) -> pa.Table:
        missing = [item for item in items if item not in self.position]
        if missing:
            raise KeyError(f"no features for items {missing[:5]}")
        return self.table.take(pa.array([self.position[item] for item in items], pa.int64()))


def candidate_rows(user_row: pa.Table, items: Sequence[Any], item_rows: ItemRows) -> pa.Table:
    """`user_row` (one raw row) repeated for each candidate, its item columns the candidates'."""
    repeated = user_row.take(pa.array(np.zeros(len(items), dtype=np.int64)))
    candidates = item_rows.take(items)
    columns = [candidates.column(name) if name in item_rows.columns else repeated.column(name)
               for name in repeated.column_names]
    return pa.Table.from_arrays(columns, schema=repeated.schema)


def as_logit(probabilities: np.ndarray) -> np.ndarray:
    clipped = np.clip(probabilities, LOGIT_EPSILON, 1.0 - LOGIT_EPSILON)
    return np.log(clipped / (1.0 - clipped))


def row_task_scorer(score: Callable[[str, pa.Table], np.ndarray], binary_tasks: set[str], user_rows: pa.Table,
                    item_rows: ItemRows, offset: int = 0) -> TaskScorer:
    """A TaskScorer over users whose raw rows are `user_rows` (position `offset + i` of the block is
    row i): one forward per task over the block's candidate rows. `score(task, rows)`: the ranker's
    predictions (probabilities for binary tasks, which become logits)."""

    def scorer(users: Sequence[int], candidates: Sequence[Sequence[Any]], tasks: Sequence[str]) -> dict[str, list[np.ndarray]]:
        tables = [candidate_rows(user_rows.slice(offset + user, 1), items, item_rows)
                  for user, items in zip(users, candidates, strict=True) if len(items)]
        sizes = [len(items) for items in candidates]
        out: dict[str, list[np.ndarray]] = {}
        for task in tasks:
            values = score(task, pa.concat_tables(tables)) if tables else np.zeros(0)
            if task in binary_tasks:
                values = as_logit(values)
            bounds = np.cumsum([0, *sizes])
            out[task] = [values[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        return out

    return scorer
