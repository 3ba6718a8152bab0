"""User slices of an evaluation split: new vs returning users and activity buckets.

Activity is a user's number of rows in the train split, the history the model learned from; buckets
are quantiles of that count over the evaluated returning users, so every dataset gets populated
buckets without hand-set edges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEW_USERS = "new users"
RETURNING_USERS = "returning users"


@dataclass(frozen=True)
class UserActivity:
    """Each user's number of train rows: `users` sorted and distinct, `counts` aligned. It grows with
    the number of users, not of events: the train split is folded into it batch by batch."""

    users: np.ndarray
    counts: np.ndarray

    @classmethod
    def of(cls, train_users: np.ndarray) -> UserActivity:
        users, counts = np.unique(np.asarray(train_users), return_counts=True)
        return cls(users, counts)

    def merged(self, train_users: np.ndarray) -> UserActivity:
        """This activity plus the rows of `train_users` (one entry per row)."""
        more = UserActivity.of(train_users)
        if len(self.users) == 0:  # an empty start has no dtype of the users' own
            return more
        users, inverse = np.unique(np.concatenate([self.users, more.users]), return_inverse=True)
        counts = np.bincount(inverse.reshape(-1), weights=np.concatenate([self.counts, more.counts]),
                             minlength=len(users)).astype(np.int64)
        return UserActivity(users, counts)


def user_slices(eval_users: np.ndarray, train_activity: UserActivity, *, activity_buckets: int = 3) -> dict[str, np.ndarray]:
    """Boolean row masks over `eval_users`, by slice name, in display order. Empty slices are left out."""
    if activity_buckets < 1:
        raise ValueError(f"activity_buckets must be >= 1, got {activity_buckets}")
    eval_users = np.asarray(eval_users)
    known, counts = train_activity.users, train_activity.counts
    position = np.searchsorted(known, eval_users)
    position = np.clip(position, 0, max(len(known) - 1, 0))
    returning = (known[position] == eval_users) if len(known) else np.zeros(len(eval_users), dtype=bool)
    activity = np.where(returning, counts[position] if len(known) else 0, 0)

    slices: dict[str, np.ndarray] = {NEW_USERS: ~returning, RETURNING_USERS: returning}
    if returning.any():
        quantiles = np.linspace(0.0, 1.0, activity_buckets + 1)[1:-1]
        inner_edges = np.unique(np.quantile(activity[returning], quantiles).round().astype(np.int64))
        lows = np.concatenate([[activity[returning].min()], inner_edges + 1])
        highs = np.concatenate([inner_edges, [activity[returning].max()]])
        for low, high in zip(lows, highs, strict=True):
            if low > high:
                continue
            label = f"activity {low}-{high} train rows" if low != high else f"activity {low} train rows"
            slices[label] = returning & (activity >= low) & (activity <= high)
    return {name: mask for name, mask in slices.items() if mask.any()}
