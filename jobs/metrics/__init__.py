"""Per-task quality metrics: one definition per metric, shared by the train job (validation), the
evaluate job and the promotion gate, which is why it lives beside them rather than in one of them.

Each `Metric` names a library implementation twice: `score`, scikit-learn on the numpy arrays of a
whole split (offline evaluation, promotion), and `streaming`, a torchmetrics metric updated batch by
batch and synchronized across Ray Train workers (training validation; the classes torchmetrics lacks
are in `jobs.metrics.streaming`). Both compute the same quantity on the same rows
(tests/test_eval_metrics.py checks it), under the same name: training logs `val/<task>/<name>`,
evaluation `eval_<split>_<task>_<name>`.

grec keeps code of its own only where no installed library has the metric:
- calibration (mean prediction over observed positive rate): a ratio of two means;
- GAUC (per-user AUC weighted by the user's rows, DIN, KDD 2018): neither scikit-learn nor
  torchmetrics has a grouped AUC;
- HR@k and NDCG@k of one held-out positive among sampled negatives: with one relevant item per user
  both are closed forms of its rank, and the rank splits ties fairly; torchmetrics' retrieval
  metrics order tied scores by position, which rewards a model that scores every candidate alike.

Every score is NaN where the metric is undefined on its input (no rows, one class only), so a
report shows "n/a" instead of failing on a small slice. Libraries are imported on first use: the
`grec` command reads this table to build its help.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torchmetrics


@dataclass(frozen=True)
class Metric:
    """A metric of one task kind: its name, which way is better (None: a target value, not an
    order), its scikit-learn score and, where training validation computes it, a factory of its
    torchmetrics counterpart (given the task's number of classes)."""

    name: str
    higher_is_better: bool | None
    score: Callable[[np.ndarray, np.ndarray], float]
    streaming: Callable[[int | None], torchmetrics.Metric] | None = None


# ---- scores on whole arrays (scikit-learn) ----------------------------------------------------------
def _defined(labels: np.ndarray, predictions: np.ndarray, *, two_classes: bool = False) -> bool:
    """Rows to measure, finite predictions (a diverged model's NaN makes every metric undefined),
    and both classes where the metric compares them."""
    return (len(labels) > 0 and bool(np.isfinite(predictions).all())
            and (not two_classes or np.unique(labels).size == 2))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties counted half)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if _defined(labels, scores, two_classes=True) else float("nan")


def binary_log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    if not _defined(labels, probabilities):
        return float("nan")
    return float(log_loss(labels, np.asarray(probabilities, dtype=np.float64), labels=[0, 1]))


def calibration(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean prediction over observed positive rate: 1.0 is calibrated, above 1 over-predicts."""
    observed = float(np.mean(labels)) if len(labels) else 0.0
    return float(np.mean(probabilities) / observed) if observed > 0.0 else float("nan")


def rmse(targets: np.ndarray, predictions: np.ndarray) -> float:
    from sklearn.metrics import root_mean_squared_error

    return float(root_mean_squared_error(targets, predictions)) if _defined(targets, predictions) else float("nan")


def mae(targets: np.ndarray, predictions: np.ndarray) -> float:
    from sklearn.metrics import mean_absolute_error

    return float(mean_absolute_error(targets, predictions)) if _defined(targets, predictions) else float("nan")


def multiclass_accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Share of rows whose most probable class is the label; `probabilities` is [n, classes]."""
    from sklearn.metrics import accuracy_score

    if not _defined(labels, probabilities):
        return float("nan")
    return float(accuracy_score(labels, np.argmax(probabilities, axis=1)))


def multiclass_log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    from sklearn.metrics import log_loss

    if not _defined(labels, probabilities):
        return float("nan")
    probabilities = np.asarray(probabilities, dtype=np.float64)
    # float32 softmax rows sum to 1 only within float32 rounding, which scikit-learn warns about
    probabilities = probabilities / probabilities.sum(axis=1, keepdims=True)
    return float(log_loss(labels, probabilities, labels=np.arange(probabilities.shape[1])))


# ---- the same metrics, streamed (torchmetrics) --------------------------------------------------------
def _streaming_auc(_: int | None) -> torchmetrics.Metric:
    from jobs.metrics.streaming import ExactBinaryAUROC

    return ExactBinaryAUROC()


def _streaming_binary_log_loss(_: int | None) -> torchmetrics.Metric:
    from jobs.metrics.streaming import MeanRowLoss, binary_cross_entropy

    return MeanRowLoss(binary_cross_entropy)


def _streaming_rmse(_: int | None) -> torchmetrics.Metric:
    from torchmetrics import MeanSquaredError

    return MeanSquaredError(squared=False)


def _streaming_mae(_: int | None) -> torchmetrics.Metric:
    from torchmetrics import MeanAbsoluteError

    return MeanAbsoluteError()


def _streaming_accuracy(num_classes: int | None) -> torchmetrics.Metric:
    from torchmetrics.classification import MulticlassAccuracy

    return MulticlassAccuracy(num_classes=num_classes, average="micro")


def _streaming_multiclass_log_loss(_: int | None) -> torchmetrics.Metric:
    from jobs.metrics.streaming import MeanRowLoss, class_cross_entropy

    return MeanRowLoss(class_cross_entropy)


# ---- the definition table ---------------------------------------------------------------------------
TASK_METRICS: Mapping[str, tuple[Metric, ...]] = {
    "binary": (Metric("auc", True, auc, _streaming_auc),
               Metric("log_loss", False, binary_log_loss, _streaming_binary_log_loss),
               Metric("calibration", None, calibration)),
    "regression": (Metric("rmse", False, rmse, _streaming_rmse), Metric("mae", False, mae, _streaming_mae)),
    "multiclass": (Metric("accuracy", True, multiclass_accuracy, _streaming_accuracy),
                   Metric("log_loss", False, multiclass_log_loss, _streaming_multiclass_log_loss)),
}
# The metric a task kind is judged by (promotion, slice charts).
PRIMARY_METRIC: Mapping[str, str] = {"binary": "auc", "regression": "rmse", "multiclass": "accuracy"}
# Which direction is better, per metric name (calibration has none: 1.0 is the target).
HIGHER_IS_BETTER: Mapping[str, bool] = {
    **{m.name: m.higher_is_better for metrics in TASK_METRICS.values() for m in metrics
       if m.higher_is_better is not None},
    "gauc": True,
}


def task_metrics(kind: str) -> tuple[Metric, ...]:
    if kind not in TASK_METRICS:
        raise ValueError(f"unknown task kind {kind!r}; expected one of {sorted(TASK_METRICS)}")
    return TASK_METRICS[kind]


def metric(kind: str, name: str) -> Metric:
    for candidate in task_metrics(kind):
        if candidate.name == name:
            return candidate
    raise ValueError(f"{kind} tasks have no metric {name!r}; metrics: {[m.name for m in task_metrics(kind)]}")


def validation_metric_names(task: str, kind: str) -> list[str]:
    """What training validation logs for a task: `val/<task>/<metric>` for every streamed metric."""
    return [f"val/{task}/{m.name}" for m in task_metrics(kind) if m.streaming is not None]


# ---- grec's own: no library has these (see the module docstring) --------------------------------------
def per_user_auc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC of each user that has both classes, with that user's row count as its weight.

    One pass for all users (the Mann-Whitney statistic from ranks within each user, ties counted
    half, as roc_auc_score counts them), so the promotion gate can recompute it per resample."""
    from scipy.stats import rankdata

    labels = np.asarray(labels) > 0.5
    _, group = np.unique(np.asarray(users), return_inverse=True)
    group = group.reshape(-1)
    if len(group) == 0:
        return np.zeros(0), np.zeros(0)
    # Ranking (user, score) pairs ranks every user's scores in one block; subtracting the rows of the
    # users before it gives ranks within the user.
    score_rank = rankdata(np.asarray(scores, dtype=np.float64), method="dense").astype(np.int64)
    global_rank = rankdata(group * (int(score_rank.max()) + 1) + score_rank, method="average")
    rows = np.bincount(group)
    within = global_rank - (np.cumsum(rows) - rows)[group]
    positives = np.bincount(group, weights=labels.astype(np.float64), minlength=len(rows))
    negatives = rows - positives
    positive_rank_sum = np.bincount(group, weights=within * labels, minlength=len(rows))
    both = (positives > 0) & (negatives > 0)
    aucs = (positive_rank_sum[both] - positives[both] * (positives[both] + 1) / 2) / (positives[both] * negatives[both])
    return aucs, rows[both].astype(np.float64)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> float:
    total = float(np.sum(weights))
    return float(np.sum(values * weights) / total) if total > 0 else float("nan")


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Group AUC: per-user AUC weighted by the user's rows, over users with both classes."""
    aucs, weights = per_user_auc(users, labels, scores)
    return weighted_mean(aucs, weights)


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
