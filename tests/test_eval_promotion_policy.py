"""The promotion rule on a paired bootstrap: promote only when the interval of the task-average gain
lies above zero and no task's interval lies below -tolerance; a challenger better by noise is kept out."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from jobs.registry.promote import PairedTask, PromotionPolicy, compare, paired_tasks, relative_gain

ROWS = 2000
POLICY = PromotionPolicy(resamples=200)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@pytest.fixture(scope="module")
def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    like = rng.integers(0, 2, ROWS).astype(np.float64)
    rating = rng.uniform(1, 5, ROWS)
    return {
        "like": like, "rating": rating,
        "like_champion": _sigmoid(like + rng.normal(0, 1.5, ROWS)),
        "rating_champion": rating + rng.normal(0, 1.0, ROWS),
        "noise": rng.normal(0, 1, ROWS),
    }


def _tasks(data, like_challenger: np.ndarray, rating_challenger: np.ndarray) -> list[PairedTask]:
    rows = np.arange(ROWS)
    return [PairedTask("like", "binary", rows, data["like"], data["like_champion"], like_challenger),
            PairedTask("rating", "regression", rows, data["rating"], data["rating_champion"], rating_challenger)]


def test_relative_gain_is_oriented_so_positive_is_better() -> None:
    assert relative_gain(0.80, 0.84, higher_is_better=True) == pytest.approx(0.05)
    assert relative_gain(1.00, 0.90, higher_is_better=False) == pytest.approx(0.10)
    assert relative_gain(0.0, 0.2, higher_is_better=True) == pytest.approx(0.2)


def test_a_challenger_better_only_by_noise_is_not_promoted(data) -> None:
    # The champion's scores plus a little noise: on these rows its point estimates may even come out
    # ahead, but the paired interval of the average gain straddles zero.
    like = _sigmoid(np.log(data["like_champion"] / (1 - data["like_champion"])) + 0.05 * data["noise"])
    rating = data["rating_champion"] + 0.02 * data["noise"]
    decision = compare(_tasks(data, like, rating), ROWS, POLICY)
    assert not decision.promote
    assert decision.average_low < 0 < decision.average_high
    assert "does not lie above +0.000%" in decision.reason and "noise" in decision.reason
    assert decision.rows == ROWS and decision.resamples == 200


def test_a_clearly_better_challenger_is_promoted_with_its_evidence(data) -> None:
    rng = np.random.default_rng(1)
    like = _sigmoid(2.5 * data["like"] - 1.25 + rng.normal(0, 1.0, ROWS))
    rating = data["rating"] + rng.normal(0, 0.5, ROWS)
    decision = compare(_tasks(data, like, rating), ROWS, POLICY)
    assert decision.promote, decision.reason
    assert decision.average_low > 0
    by_task = {c.task: c for c in decision.comparisons}
    assert by_task["like"].metric == "auc" and by_task["rating"].metric == "rmse"
    for comparison in decision.comparisons:
        assert comparison.gain_low <= comparison.gain <= comparison.gain_high and comparison.rows == ROWS
    assert decision.average_gain == pytest.approx((by_task["like"].gain + by_task["rating"].gain) / 2)


def test_a_task_confidently_worse_than_the_tolerance_blocks_promotion(data) -> None:
    rng = np.random.default_rng(2)
    like = _sigmoid(4.0 * data["like"] - 2.0 + rng.normal(0, 1.0, ROWS))  # much better
    rating = data["rating"] + rng.normal(0, 1.3, ROWS)  # clearly worse
    decision = compare(_tasks(data, like, rating), ROWS, POLICY)
    assert not decision.promote and decision.average_gain > 0
    worse = [c for c in decision.comparisons if c.worse_than_tolerance]
    assert [c.task for c in worse] == ["rating"] and worse[0].gain_high < -POLICY.tolerance
    assert "tasks worse than the tolerance of 0.50%: rating rmse" in decision.reason


def test_the_same_resampled_rows_serve_both_models(data) -> None:
    """Identical scores: every resample's gain is exactly 0, so the interval is [0, 0]."""
    decision = compare(_tasks(data, data["like_champion"], data["rating_champion"]), ROWS, POLICY)
    assert not decision.promote
    assert (decision.average_low, decision.average_high) == (0.0, 0.0)


def test_gauc_can_be_the_primary_metric(data) -> None:
    rows = np.arange(ROWS)
    users = rows % 50
    rng = np.random.default_rng(3)
    better = _sigmoid(2.5 * data["like"] - 1.25 + rng.normal(0, 1.0, ROWS))
    task = PairedTask("like", "binary", rows, data["like"], data["like_champion"], better, users)
    decision = compare([task], ROWS, PromotionPolicy(resamples=100, primary_metrics={"binary": "gauc"}))
    assert decision.comparisons[0].metric == "gauc" and decision.promote


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="primary metric 'calibration' for binary tasks is not one of"):
        PromotionPolicy(primary_metrics={"binary": "calibration"})
    with pytest.raises(ValueError, match="tolerance must be"):
        PromotionPolicy(tolerance=-0.1)
    with pytest.raises(ValueError, match="resamples must be >= 100"):
        PromotionPolicy(resamples=10)


def test_an_undefined_challenger_metric_is_a_rejection(data) -> None:
    decision = compare(_tasks(data, np.full(ROWS, np.nan), data["rating_champion"]), ROWS, POLICY)
    assert not decision.promote and "undefined" in decision.reason


class _Scored:
    """What paired_tasks reads of a ScoredSplit."""

    def __init__(self, tasks, rows: pa.Table, split: str = "test") -> None:
        from grec.spec import CategoricalFeature, InputSpec

        spec = InputSpec(name="toy", categorical=(CategoricalFeature("user_id", 10),), timestamp="ts", tasks=tasks)
        self.model = type("Model", (), {"spec": spec})()
        self.rows, self.split = rows, split

    def task_arrays(self, task):
        from jobs.evaluate.job import _task_arrays

        return _task_arrays(self.rows, task)


def test_scores_of_different_rows_or_a_dropped_task_are_refused() -> None:
    from grec.spec import TaskSpec

    like, rating = TaskSpec("like", "binary", "label_like"), TaskSpec("rating", "regression", "label_rating")
    table = pa.table({"user_id": [1, 2], "item_id": [3, 4], "ts": [5, 6], "label_like": [1, 0],
                      "label_rating": [4.0, 2.0], "score_like": [0.9, 0.2], "score_rating": [3.5, 2.5]})
    tasks, rows = paired_tasks(_Scored((like, rating), table), _Scored((like, rating), table))
    assert rows == 2 and [t.name for t in tasks] == ["like", "rating"]
    with pytest.raises(ValueError, match="scored on different rows"):
        paired_tasks(_Scored((like, rating), table), _Scored((like, rating), table.slice(0, 1)))
    with pytest.raises(ValueError, match="does not serve the champion's task 'rating'"):
        paired_tasks(_Scored((like, rating), table), _Scored((like,), table))
    assert math.isnan(compare([], 0, POLICY).average_gain)
