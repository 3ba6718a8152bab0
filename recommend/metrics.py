"""Top-N metrics, every one from one array: for each user, whether the item at each rank of the list
is relevant (RecBole's evaluators work the same way). Binary relevance, log2 discount; NDCG's ideal
list holds min(k, |truth|) relevant items, so items a system never ranked still count against it.
"""

from __future__ import annotations

import numpy as np


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def hit_rate(relevant: np.ndarray, k: int) -> np.ndarray:
    """[users]: 1 where a relevant item is among the first k."""
    return relevant[:, :k].any(axis=1).astype(np.float64)


def ndcg(relevant: np.ndarray, truth_counts: np.ndarray, k: int) -> np.ndarray:
    discounts = _discounts(k)
    gains = (relevant[:, :k] * discounts[:relevant[:, :k].shape[1]]).sum(axis=1)
    ideal = np.cumsum(discounts)[np.clip(np.minimum(truth_counts, k), 1, k) - 1]
    return np.where(truth_counts > 0, gains / ideal, 0.0)


def mrr(relevant: np.ndarray, k: int) -> np.ndarray:
    """[users]: 1 / rank of the first relevant item within k (0 without one)."""
    top = relevant[:, :k]
    first = top.argmax(axis=1)
    return np.where(top.any(axis=1), 1.0 / (first + 1), 0.0)


def recall(relevant: np.ndarray, truth_counts: np.ndarray, k: int) -> np.ndarray:
    return relevant[:, :k].sum(axis=1) / np.maximum(truth_counts, 1)


def per_user_metrics(relevant: np.ndarray, truth_counts: np.ndarray, k: int = 10,
                     recall_at: int = 50) -> dict[str, np.ndarray]:
    """Every per-user metric of the lists (`relevant` [users, >= max(k, recall_at)] or shorter
    lists padded with False)."""
    width = max(k, recall_at)
    if relevant.shape[1] < width:
        relevant = np.pad(relevant, ((0, 0), (0, width - relevant.shape[1])))
    return {f"hr@{k}": hit_rate(relevant, k), f"ndcg@{k}": ndcg(relevant, truth_counts, k),
            f"mrr@{k}": mrr(relevant, k), f"recall@{recall_at}": recall(relevant, truth_counts, recall_at)}


class ShownItems:
    """Catalogue coverage (share of the catalogue shown to anyone in the first k; item rows >= 1, 0
    pads) and novelty (mean popularity rank, 1 = most popular, of the items shown in the first k:
    higher is more novel) of lists given block by block of users. Ranks are whole numbers, so their
    sum is exact and both figures are the same whatever the blocks."""

    def __init__(self, popularity_rank: np.ndarray, k: int) -> None:
        self.popularity_rank, self.k = popularity_rank, k
        self.items = np.zeros(len(popularity_rank), dtype=bool)  # by catalogue row, 0 unused
        self.rank_sum, self.count = 0.0, 0

    def add(self, lists: np.ndarray) -> None:
        shown = lists[:, :self.k]
        shown = shown[shown > 0]
        self.items[shown] = True
        self.rank_sum += float(self.popularity_rank[shown].sum())
        self.count += len(shown)

    def coverage(self) -> float:
        return float(self.items[1:].sum() / max(len(self.items) - 1, 1))

    def novelty(self) -> float:
        return self.rank_sum / self.count if self.count else float("nan")
