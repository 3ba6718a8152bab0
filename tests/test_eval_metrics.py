"""The evaluation metrics agree with scikit-learn and with hand-computed values, and stay defined
(NaN, not an exception) where a slice has one class only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from jobs.evaluate import metrics
from jobs.evaluate.bootstrap import bootstrap_interval
from jobs.evaluate.compute import metrics_with_intervals, point_metrics, ranking_metrics, slice_metrics
from jobs.evaluate.slices import NEW_USERS, RETURNING_USERS, user_slices


@pytest.fixture
def binary_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 500).astype(np.float32)
    # informative but noisy scores, rounded so that ties occur
    scores = np.clip(0.3 * labels + rng.normal(0.35, 0.25, 500), 0.01, 0.99).round(2)
    users = rng.integers(0, 40, 500)
    return labels, scores, users


def test_auc_and_log_loss_match_sklearn(binary_data) -> None:
    labels, scores, _ = binary_data
    assert metrics.auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    assert metrics.log_loss(labels, scores) == pytest.approx(skm.log_loss(labels, scores), abs=1e-9)


def test_auc_is_undefined_with_one_class() -> None:
    assert math.isnan(metrics.auc(np.ones(5), np.linspace(0, 1, 5)))


def test_gauc_weights_users_by_rows_and_skips_single_class_users() -> None:
    users = np.array([1, 1, 1, 1, 2, 2, 3, 3])
    labels = np.array([1, 0, 1, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.2, 0.9, 0.5, 0.6])
    # user 1: AUC 1 over 4 rows, user 2: AUC 0 over 2 rows, user 3: one class -> left out
    assert metrics.gauc(users, labels, scores) == pytest.approx(4 / 6)


def test_calibration_is_mean_prediction_over_positive_rate() -> None:
    assert metrics.calibration(np.array([1, 0, 0, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(2.0)


def test_regression_and_multiclass_metrics() -> None:
    targets = np.array([1.0, 2.0, 3.0, 4.0])
    preds = np.array([1.5, 2.0, 2.0, 4.0])
    assert metrics.rmse(targets, preds) == pytest.approx(math.sqrt(skm.mean_squared_error(targets, preds)))
    assert metrics.mae(targets, preds) == pytest.approx(skm.mean_absolute_error(targets, preds))
    labels = np.array([0, 2, 1, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    assert metrics.multiclass_accuracy(labels, probs) == pytest.approx(0.75)
    assert metrics.multiclass_log_loss(labels, probs) == pytest.approx(skm.log_loss(labels, probs))


def test_ranking_places_positive_in_column_zero_and_splits_ties() -> None:
    scores = np.array([
        [0.9, 0.1, 0.2, 0.3],  # first
        [0.2, 0.9, 0.8, 0.1],  # third
        [0.5, 0.5, 0.5, 0.5],  # tied with three: middle -> rank 1
    ])
    ranks = metrics.positive_rank(scores)
    assert ranks.tolist() == [0, 2, 1]
    assert metrics.hit_rate_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert metrics.hit_rate_at_k(ranks, 3) == pytest.approx(1.0)
    expected_ndcg = (1.0 + 1 / math.log2(4) + 1 / math.log2(3)) / 3
    assert metrics.ndcg_at_k(ranks, 3) == pytest.approx(expected_ndcg)


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible(binary_data) -> None:
    labels, scores, users = binary_data
    estimates = metrics_with_intervals("binary", labels, scores, users, resamples=100, seed=3)
    for name in ("auc", "log_loss", "calibration", "gauc"):
        est = estimates[name]
        assert est.low <= est.value <= est.high, name
    again = metrics_with_intervals("binary", labels, scores, users, resamples=100, seed=3)
    assert again == estimates
    # more data -> narrower interval
    narrow = bootstrap_interval(lambda i: float(np.mean(np.arange(10_000)[i])), 10_000, resamples=100)
    wide = bootstrap_interval(lambda i: float(np.mean(np.arange(0, 10_000, 100)[i])), 100, resamples=100)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]


def test_bootstrap_skips_undefined_draws_and_handles_no_data() -> None:
    assert all(math.isnan(x) for x in bootstrap_interval(lambda i: float("nan"), 10, resamples=5))
    assert all(math.isnan(x) for x in bootstrap_interval(lambda i: 1.0, 0, resamples=5))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(lambda i: 1.0, 3, confidence=1.5)


def test_point_metrics_reject_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown task kind 'ranking'"):
        point_metrics("ranking", np.zeros(2), np.zeros(2))


def test_user_slices_split_new_returning_and_activity() -> None:
    train_users = np.array([1] * 10 + [2] * 3 + [3] * 1 + [4] * 6)
    eval_users = np.array([1, 1, 2, 3, 4, 5, 6])
    slices = user_slices(eval_users, train_users, activity_buckets=2)
    assert slices[NEW_USERS].tolist() == [False, False, False, False, False, True, True]
    assert slices[RETURNING_USERS].tolist() == [True, True, True, True, True, False, False]
    activity = {k: v for k, v in slices.items() if k.startswith("activity")}
    assert len(activity) == 2
    # every returning row falls in exactly one activity bucket, busier users in the later bucket
    stacked = np.stack(list(activity.values()))
    assert (stacked.sum(axis=0) == slices[RETURNING_USERS]).all()
    assert stacked[-1][0] and stacked[-1][1]  # user 1 (10 train rows) is in the busiest bucket


def test_user_slices_without_train_history_are_all_new() -> None:
    slices = user_slices(np.array([1, 2]), np.array([], dtype=np.int64))
    assert list(slices) == [NEW_USERS]


def test_slice_and_ranking_metrics_carry_counts_and_intervals(binary_data) -> None:
    labels, scores, users = binary_data
    masks = {"even users": users % 2 == 0, "odd users": users % 2 == 1}
    per_slice = slice_metrics("binary", labels, scores, users, masks)
    assert per_slice["even users"]["rows"] + per_slice["odd users"]["rows"] == len(labels)
    assert 0.0 <= per_slice["odd users"]["auc"] <= 1.0
    ranks = np.array([0, 3, 12, 1, 50])
    ranking = ranking_metrics(ranks, [1, 10], resamples=50)
    assert ranking["hr@10"].value == pytest.approx(0.6)
    assert ranking["hr@1"].low <= ranking["hr@1"].value <= ranking["hr@1"].high
