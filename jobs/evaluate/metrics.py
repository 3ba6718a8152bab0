"""Per-task quality metrics: pure functions of labels, scores and (for GAUC) user keys.

Every function returns NaN when the metric is undefined on its input (one class only, no rows),
so a report can show "n/a" instead of failing on a small slice.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Probabilities are clipped away from 0 and 1 before taking logs, as every log-loss tool does.
_EPS = 1e-7

# Which direction is better, per metric name (calibration has none: 1.0 is the target).
HIGHER_IS_BETTER: Mapping[str, bool] = {
    "auc": True,
    "gauc": True,
    "log_loss": False,
    "rmse": False,
    "mae": False,
    "accuracy": True,
}


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of `values`, ties sharing their average rank."""
    order = np.argsort(values, kind="mergesort")
    _, inverse, counts = np.unique(values[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    mean_rank = (ends - counts + 1 + ends) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half)."""
    labels = np.asarray(labels) > 0.5
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy of probabilities against 0/1 labels."""
    if len(labels) == 0:
        return float("nan")
    y = np.asarray(labels, dtype=np.float64)
    p = np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0 - _EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def calibration(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean prediction over observed positive rate: 1.0 is calibrated, above 1 over-predicts."""
    observed = float(np.mean(labels)) if len(labels) else 0.0
    if observed == 0.0:
        return float("nan")
    return float(np.mean(probabilities) / observed)


def per_user_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC of each user that has both classes, with that user's row count as its weight."""
    users = np.asarray(users)
    labels = np.asarray(labels)
    scores = np.asarray(scores)
    order = np.argsort(users, kind="mergesort")
    _, starts, counts = np.unique(users[order], return_index=True, return_counts=True)
    aucs, weights = [], []
    for start, count in zip(starts, counts, strict=True):
        rows = order[start:start + count]
        value = auc(labels[rows], scores[rows])
        if not np.isnan(value):
            aucs.append(value)
            weights.append(count)
    return np.asarray(aucs, dtype=np.float64), np.asarray(weights, dtype=np.float64)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(np.sum(weights))
    return float(np.sum(values * weights) / total) if total > 0 else float("nan")


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: per-user AUC weighted by the user's rows, over users with both classes (DIN, KDD 2018)."""
    aucs, weights = per_user_auc(users, labels, scores)
    return weighted_mean(aucs, weights)


def rmse(targets: np.ndarray, predictions: np.ndarray) -> float:
    if len(targets) == 0:
        return float("nan")
    diff = np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64)
    return float(np.sqrt(np.mean(diff * diff)))


def mae(targets: np.ndarray, predictions: np.ndarray) -> float:
    if len(targets) == 0:
        return float("nan")
    return float(np.mean(np.abs(np.asarray(predictions, dtype=np.float64) - np.asarray(targets, dtype=np.float64))))


def multiclass_accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Share of rows whose most probable class is the label; `probabilities` is [n, classes]."""
    if len(labels) == 0:
        return float("nan")
    return float(np.mean(np.argmax(probabilities, axis=1) == np.asarray(labels)))


def multiclass_log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean cross-entropy of the label's class probability."""
    if len(labels) == 0:
        return float("nan")
    p = np.asarray(probabilities, dtype=np.float64)
    chosen = p[np.arange(len(p)), np.asarray(labels, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(chosen, _EPS, 1.0))))


def hit_rate_at_k(positive_ranks: np.ndarray, k: int) -> float:
    """Share of held-out positives ranked in the top k (ranks are 0-based)."""
    if len(positive_ranks) == 0:
        return float("nan")
    return float(np.mean(np.asarray(positive_ranks) < k))


def ndcg_at_k(positive_ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item per user: 1 / log2(rank + 2) when it is in the top k."""
    if len(positive_ranks) == 0:
        return float("nan")
    ranks = np.asarray(positive_ranks, dtype=np.float64)
    return float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))


def positive_rank(candidate_scores: np.ndarray) -> np.ndarray:
    """0-based rank of the positive (column 0) among each row's candidates; a positive tied with m
    negatives is placed in the middle of them, so constant scores earn no credit."""
    scores = np.asarray(candidate_scores, dtype=np.float64)
    positive = scores[:, :1]
    above = np.sum(scores[:, 1:] > positive, axis=1)
    tied = np.sum(scores[:, 1:] == positive, axis=1)
    return above + tied // 2
