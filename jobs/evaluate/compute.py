"""From labels and predictions to metrics: per task kind (the shared definitions of
jobs/metrics), with bootstrap intervals, per slice and for leave-last-out ranking."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from jobs import metrics
from jobs.evaluate.bootstrap import bootstrap_interval
from jobs.evaluate.results import Estimate


def point_metrics(kind: str, labels: np.ndarray, predictions: np.ndarray, users: np.ndarray | None = None) -> dict[str, float]:
    """Every metric of the kind on these rows; GAUC too for binary tasks when user keys are given."""
    values = {m.name: m.score(labels, predictions) for m in metrics.task_metrics(kind)}
    if kind == "binary" and users is not None:
        values["gauc"] = metrics.gauc(users, labels, predictions)
    return values


def metrics_with_intervals(
    kind: str,
    labels: np.ndarray,
    predictions: np.ndarray,
    users: np.ndarray | None = None,
    *,
    resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """`point_metrics` with percentile bootstrap intervals: rows are resampled for row metrics and
    users for GAUC (a user's rows move together, as they are not independent)."""
    out: dict[str, Estimate] = {}
    n = len(labels)
    for metric in metrics.task_metrics(kind):
        score = metric.score
        low, high = bootstrap_interval(lambda idx, score=score: score(labels[idx], predictions[idx]), n,
                                       resamples=resamples, confidence=confidence, seed=seed)
        out[metric.name] = Estimate(score(labels, predictions), low, high)
    if kind == "binary" and users is not None:
        user_aucs, weights = metrics.per_user_auc(users, labels, predictions)
        value = metrics.weighted_mean(user_aucs, weights)
        low, high = bootstrap_interval(lambda idx: metrics.weighted_mean(user_aucs[idx], weights[idx]),
                                       len(user_aucs), resamples=resamples, confidence=confidence, seed=seed)
        out["gauc"] = Estimate(value, low, high)
    return out


def slice_metrics(
    kind: str,
    labels: np.ndarray,
    predictions: np.ndarray,
    users: np.ndarray | None,
    slices: Mapping[str, np.ndarray],
) -> dict[str, dict[str, float]]:
    """Point metrics per slice (boolean row masks), each with its row count."""
    return {
        name: {"rows": float(mask.sum()),
               **point_metrics(kind, labels[mask], predictions[mask], None if users is None else users[mask])}
        for name, mask in slices.items()
    }


def ranking_metrics(
    positive_ranks: np.ndarray,
    ks: Sequence[int],
    *,
    resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, Estimate]:
    """HR@k and NDCG@k of held-out positives (one per user) with user-bootstrap intervals."""
    out: dict[str, Estimate] = {}
    for k in ks:
        for name, fn in (("hr", metrics.hit_rate_at_k), ("ndcg", metrics.ndcg_at_k)):
            value = fn(positive_ranks, k)
            low, high = bootstrap_interval(lambda idx, fn=fn, k=k: fn(positive_ranks[idx], k), len(positive_ranks),
                                           resamples=resamples, confidence=confidence, seed=seed)
            out[f"{name}@{k}"] = Estimate(value, low, high)
    return out
