"""A block of the users a top-N evaluation judges, as catalogue rows: each user's seen items (what
the lists leave out), relevant items and moment, cut from recommend.offline.Interactions with array
operations. Full-catalogue ranking holds [users, catalogue] arrays, so evaluation works through the
judged users a block at a time and builds only the block's arrays, never Python objects per event.

Each field is what recommend.offline.users_of gives for the same users (the seen set, `now`, the
truth per target), mapped to the stage's catalogue rows (1..N; items outside it have none).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from feature_store.options import SPLITS
from recommend.offline import Interactions, split_runs_at


@dataclass(frozen=True)
class CatalogueUsers:
    ids: list[Any]  # raw user ids (Python values)
    now: np.ndarray  # seconds: the user's first event of the split
    history_sizes: np.ndarray  # events before the split
    seen: tuple[np.ndarray, np.ndarray]  # (user, catalogue row) of each earlier event in the catalogue
    relevant: tuple[np.ndarray, np.ndarray]  # (user, catalogue row) of each relevant event in the catalogue
    truth_counts: np.ndarray  # distinct relevant items per user, in the catalogue or not

    def __len__(self) -> int:
        return len(self.ids)

    def relevance(self, num_items: int) -> np.ndarray:
        """[users, N + 1] booleans by catalogue row: the user's relevant items."""
        matrix = np.zeros((len(self), num_items + 1), dtype=bool)
        matrix[self.relevant] = True
        return matrix

    def top_rows(self, scores: np.ndarray, depth: int) -> np.ndarray:
        """[users, depth] catalogue rows (1..N) of each user's best unseen items by `scores` [users, N]
        (ties to the lower row); 0 where fewer remain."""
        masked = scores.astype(np.float64)
        users, rows = self.seen
        masked[users, rows - 1] = -np.inf
        top = np.argsort(-masked, axis=1, kind="stable")[:, :depth]
        return np.where(np.isfinite(np.take_along_axis(masked, top, axis=1)), top + 1, 0)


def catalogue_users(interactions: Interactions, split: str, label: str | None, positions: Sequence[int],
                    row_of_code: np.ndarray) -> CatalogueUsers:
    """The split's users at `positions` (see recommend.offline.split_runs); relevant events are the
    split's positives of `label` (every event of it for None); `row_of_code`: the catalogue row of
    each item code (0 outside the catalogue)."""
    starts, ends = split_runs_at(interactions, split, positions)
    lengths = ends - starts
    owner = np.repeat(np.arange(len(starts)), lengths)
    # the index of every event of the block's users, run after run
    event = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)
    code = SPLITS.index(split)
    splits = interactions.splits[event]
    earlier, inside = splits < code, splits == code
    relevant = inside if label is None else inside & interactions.positives[label][event]
    items = interactions.item_codes[event]
    rows = row_of_code[items]
    # events are in time order within a user's run: the first of the split is the moment
    inside_at = np.flatnonzero(inside)
    _, first = np.unique(owner[inside_at], return_index=True)
    pairs = np.unique(owner[relevant].astype(np.int64) * len(interactions.item_values) + items[relevant])
    known = rows > 0
    return CatalogueUsers(
        interactions.user_values[interactions.user_codes[starts]].tolist(),
        interactions.times[event[inside_at[first]]],
        np.bincount(owner[earlier], minlength=len(starts)).astype(np.int64),
        (owner[earlier & known], rows[earlier & known]),
        (owner[relevant & known], rows[relevant & known]),
        np.bincount(pairs // len(interactions.item_values), minlength=len(starts)).astype(np.int64))
