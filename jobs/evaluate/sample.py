"""The scored rows evaluation holds in the driver: every row of the users with the smallest stable
hashes, at most `max_rows` rows, whatever the size of the split.

Whole users, not single rows: GAUC, user slices and leave-last-out ranking are per user and need a
user's every row. The hash is of the user's id (feature_store.hashing), so the sample does not depend
on the order in which Ray Data returns blocks, and two models scored on one split hold the same rows
(the promotion gate pairs them row by row). A split of at most `max_rows` rows is held whole.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from feature_store.hashing import stable_hash64_array

_HASH = "_sample_hash"


class UserSample:
    """Folds scored batches into the rows of the lowest-hash users that fit in `max_rows` rows.

    Invariant: the rows held are those of every user whose hash is at most `threshold` (all users
    while it is None). When more than twice `max_rows` rows are held, the threshold drops to the
    largest prefix of users by hash that fits; a user cut once can never fit again, as its rows only
    grow. So the result is the same as choosing the prefix over the whole split at once."""

    def __init__(self, unit: str | None, max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.unit, self.max_rows = unit, max_rows
        self.threshold: np.uint64 | None = None
        self.rows_seen = 0
        self._tables: list[pa.Table] = []
        self._held = 0

    def add(self, batch: pa.Table) -> None:
        self.rows_seen += batch.num_rows
        hashes = self._hashes(batch)
        if self.threshold is not None:
            keep = hashes <= self.threshold
            batch, hashes = batch.filter(pa.array(keep)), hashes[keep]
        if batch.num_rows == 0:
            return
        self._tables.append(batch.append_column(_HASH, pa.array(hashes)))
        self._held += batch.num_rows
        if self._held > 2 * self.max_rows:  # amortized: a cut every max_rows rows at most
            self._cut()

    @property
    def sampled(self) -> bool:
        """Some rows of the split are not held."""
        return self.threshold is not None

    def table(self) -> pa.Table:
        """The held rows (without the hash column); empty with no columns when nothing was added."""
        if self._held > self.max_rows:
            self._cut()
        if not self._tables:
            return pa.table({})
        return pa.concat_tables(self._tables).drop_columns([_HASH])

    def _hashes(self, batch: pa.Table) -> np.ndarray:
        if self.unit is None:  # no user or item key: each row is its own unit, numbered as it arrives
            return stable_hash64_array(pa.array(np.arange(self.rows_seen - batch.num_rows, self.rows_seen)))
        return stable_hash64_array(batch.column(self.unit))

    def _cut(self) -> None:
        held = pa.concat_tables(self._tables)
        hashes = held.column(_HASH).to_numpy()
        units, rows = np.unique(hashes, return_counts=True)  # sorted by hash
        fitting = int(np.searchsorted(np.cumsum(rows), self.max_rows, side="right"))
        if fitting == len(units):
            self._tables = [held]
            return
        # every unit from `fitting` on is cut; 0 units fit when the first alone exceeds max_rows
        self.threshold = units[fitting - 1] if fitting else np.uint64(0)
        kept = held.filter(pa.array(hashes <= self.threshold)) if fitting else held.slice(0, 0)
        self._tables, self._held = [kept], kept.num_rows
