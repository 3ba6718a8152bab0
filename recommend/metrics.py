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


def coverage(lists: np.ndarray, num_items: int, k: int) -> float:
    """Share of the catalogue shown to anyone in the first k (item rows >= 1; 0 pads)."""
    shown = np.unique(lists[:, :k])
    return float(len(shown[shown > 0]) / max(num_items, 1))


def novelty(lists: np.ndarray, popularity_rank: np.ndarray, k: int) -> float:
    """Mean popularity rank (1 = most popular) of the items shown in the first k: higher is more novel."""
    shown = lists[:, :k]
    shown = shown[shown > 0]
    return float(popularity_rank[shown].mean()) if len(shown) else float("nan")
