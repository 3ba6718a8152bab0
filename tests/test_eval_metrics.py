"""The evaluation metrics: scikit-learn's, with the same values streamed by torchmetrics in
training validation; grec's own GAUC and ranking metrics against hand-computed values; NaN (not an
exception) where a slice has one class only."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from jobs import metrics
from jobs.evaluate.bootstrap import bootstrap_interval, bootstrap_intervals
from jobs.evaluate.compute import metrics_with_intervals, point_metrics, ranking_metrics, slice_metrics
from jobs.evaluate.slices import NEW_USERS, RETURNING_USERS, UserActivity, user_slices


@pytest.fixture
def binary_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, 500).astype(np.float32)
    # informative but noisy scores, rounded so that ties occur
    scores = np.clip(0.3 * labels + rng.normal(0.35, 0.25, 500), 0.01, 0.99).round(2)
    users = rng.integers(0, 40, 500)
    return labels, scores, users


def test_auc_is_undefined_with_one_class_or_no_rows() -> None:
    assert math.isnan(metrics.auc(np.ones(5), np.linspace(0, 1, 5)))
    assert math.isnan(metrics.binary_log_loss(np.zeros(0), np.zeros(0)))
    assert math.isnan(metrics.rmse(np.zeros(0), np.zeros(0)))


def _streamed(metric: metrics.Metric, labels, predictions, num_classes=None, batches: int = 4) -> float:
    """The metric's torchmetrics form fed in batches, as training validation feeds it."""
    import torch

    streaming = metric.streaming(num_classes)
    for part_labels, part_predictions in zip(np.array_split(labels, batches), np.array_split(predictions, batches),
                                             strict=True):
        target = torch.as_tensor(part_labels)
        streaming.update(torch.as_tensor(part_predictions, dtype=torch.float32),
                         target.float() if target.is_floating_point() else target.long())
    return float(streaming.compute())


@pytest.mark.parametrize("kind", ["binary", "regression", "multiclass"])
def test_training_validation_and_evaluation_compute_the_same_metrics(kind) -> None:
    """One definition, two implementations: the streamed value equals scikit-learn's on the same rows."""
    rng = np.random.default_rng(1)
    n = 1000
    if kind == "binary":
        labels = rng.integers(0, 2, n)
        predictions = np.clip(0.3 * labels + rng.uniform(0, 0.7, n), 0, 1).round(2).astype(np.float32)
    elif kind == "regression":
        labels = rng.uniform(1, 5, n).astype(np.float32)
        predictions = (labels + rng.normal(0, 0.7, n)).astype(np.float32)
    else:
        labels = rng.integers(0, 4, n)
        predictions = rng.dirichlet(np.ones(4), n).astype(np.float32)
    streamed = [m for m in metrics.task_metrics(kind) if m.streaming is not None]
    assert streamed, kind
    for metric in streamed:
        offline = metric.score(labels, predictions)
        assert _streamed(metric, labels, predictions, num_classes=4) == pytest.approx(offline, rel=1e-5), metric.name
    assert metrics.auc(labels, predictions) == pytest.approx(skm.roc_auc_score(labels, predictions)) \
        if kind == "binary" else True


def test_the_streamed_auc_is_nan_with_one_class_like_the_offline_one() -> None:
    metric = metrics.metric("binary", "auc")
    assert math.isnan(_streamed(metric, np.ones(10, dtype=np.int64), np.linspace(0, 1, 10).astype(np.float32)))


def test_per_user_auc_is_scikit_learns_auc_of_each_user(binary_data) -> None:
    labels, scores, users = binary_data
    aucs, weights = metrics.per_user_auc(users, labels, scores)
    expected = [(skm.roc_auc_score(labels[users == u], scores[users == u]), (users == u).sum())
                for u in np.unique(users) if len(np.unique(labels[users == u])) == 2]
    np.testing.assert_allclose(aucs, [a for a, _ in expected], atol=1e-12)
    np.testing.assert_array_equal(weights, [w for _, w in expected])


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
    assert metrics.rmse(targets, preds) == pytest.approx(math.sqrt(0.25 / 4 + 1.0 / 4))
    labels = np.array([0, 2, 1, 2])
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    assert metrics.multiclass_accuracy(labels, probs) == pytest.approx(0.75)
    assert metrics.multiclass_log_loss(labels, probs) == pytest.approx(-np.mean(np.log([0.7, 0.6, 0.4, 0.6])))


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


def test_undefined_draws_or_no_data_give_no_interval() -> None:
    assert all(math.isnan(x) for x in bootstrap_interval(lambda i: float("nan"), 10, resamples=5))
    assert all(math.isnan(x) for x in bootstrap_interval(lambda i: 1.0, 0, resamples=5))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(lambda i: 1.0, 3, confidence=1.5)


def test_a_vector_statistic_gets_one_interval_per_entry_from_the_same_draws() -> None:
    values = np.arange(200, dtype=np.float64)
    low, high = bootstrap_intervals(lambda i: np.array([values[i].mean(), 2 * values[i].mean()]), 200,
                                    resamples=200, seed=1)
    assert low[1] == pytest.approx(2 * low[0]) and high[1] == pytest.approx(2 * high[0])


def test_point_metrics_reject_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown task kind 'ranking'"):
        point_metrics("ranking", np.zeros(2), np.zeros(2))


def test_user_slices_split_new_returning_and_activity() -> None:
    train_users = np.array([1] * 10 + [2] * 3 + [3] * 1 + [4] * 6)
    eval_users = np.array([1, 1, 2, 3, 4, 5, 6])
    slices = user_slices(eval_users, UserActivity.of(train_users), activity_buckets=2)
    assert slices[NEW_USERS].tolist() == [False, False, False, False, False, True, True]
    assert slices[RETURNING_USERS].tolist() == [True, True, True, True, True, False, False]
    activity = {k: v for k, v in slices.items() if k.startswith("activity")}
    assert len(activity) == 2
    # every returning row falls in exactly one activity bucket, busier users in the later bucket
    stacked = np.stack(list(activity.values()))
    assert (stacked.sum(axis=0) == slices[RETURNING_USERS]).all()
    assert stacked[-1][0] and stacked[-1][1]  # user 1 (10 train rows) is in the busiest bucket


def test_user_slices_without_train_history_are_all_new() -> None:
    slices = user_slices(np.array([1, 2]), UserActivity.of(np.array([], dtype=np.int64)))
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


def _validate_on_rank(rank: int, port: int, rows: dict, out) -> None:
    """One rank of a two-rank validation: rank 1 scored no row at all."""
    import torch
    import torch.distributed as dist

    from grec.spec import TaskSpec
    from jobs.train.metrics import ValidationAccumulator

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    tasks = [TaskSpec("like", "binary", "label_like"), TaskSpec("rating", "regression", "label_rating")]
    accumulator = ValidationAccumulator(tasks, num_experts=2)
    if rank == 0:
        for part in np.array_split(np.arange(len(rows["like"])), 3):
            accumulator.update({"like": torch.tensor(rows["like_p"][part]), "rating": torch.tensor(rows["rating_p"][part])},
                               {"like": torch.tensor(rows["like"][part]), "rating": torch.tensor(rows["rating"][part])},
                               loss=0.5, rows=len(part), expert_load=torch.ones(2, 2))
    accumulator.all_reduce(dist.all_reduce)
    out.put((rank, accumulator.compute()))
    dist.destroy_process_group()


def test_validation_metrics_agree_across_ranks_when_one_rank_has_no_rows() -> None:
    """The sync does not hang when a rank scored nothing, and every rank gets scikit-learn's values."""
    import torch.multiprocessing as mp
    from conftest import free_loopback_port

    rng = np.random.default_rng(2)
    like = rng.integers(0, 2, 300).astype(np.float32)
    rows = {"like": like, "like_p": np.clip(0.4 * like + rng.uniform(0, 0.6, 300), 0, 1).astype(np.float32),
            "rating": rng.uniform(1, 5, 300).astype(np.float32)}
    rows["rating_p"] = (rows["rating"] + rng.normal(0, 0.5, 300)).astype(np.float32)
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_loopback_port()
    processes = [context.Process(target=_validate_on_rank, args=(rank, port, rows, results)) for rank in (0, 1)]
    for process in processes:
        process.start()
    values = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    assert values[0] == values[1]
    assert values[0]["val/like/auc"] == pytest.approx(skm.roc_auc_score(like, rows["like_p"]), rel=1e-6)
    assert values[0]["val/rating/rmse"] == pytest.approx(metrics.rmse(rows["rating"], rows["rating_p"]), rel=1e-5)
    assert values[0]["val/loss"] == pytest.approx(0.5)
