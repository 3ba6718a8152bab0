"""The promotion rule: no task worse than the tolerance and a task-average gain, on the same data."""

from __future__ import annotations

import math

import pytest

from jobs.evaluate.results import Estimate, EvaluationResult, TaskEvaluation
from jobs.promote import PromotionPolicy, compare, relative_gain


def _result(version: str, like_auc: float, rating_rmse: float, rows: int = 100) -> EvaluationResult:
    tasks = [
        TaskEvaluation("like", "binary", "main", rows, {"auc": Estimate(like_auc), "gauc": Estimate(like_auc - 0.05)}),
        TaskEvaluation("rating", "regression", "auxiliary", rows, {"rmse": Estimate(rating_rmse)}),
    ]
    return EvaluationResult(f"models:/m/{version}", "m", version, "movielens-100k", "test", rows, tasks)


def test_relative_gain_is_oriented_so_positive_is_better() -> None:
    assert relative_gain(0.80, 0.84, higher_is_better=True) == pytest.approx(0.05)
    assert relative_gain(1.00, 0.90, higher_is_better=False) == pytest.approx(0.10)
    assert relative_gain(0.0, 0.2, higher_is_better=True) == pytest.approx(0.2)


def test_promotes_when_every_task_holds_and_the_average_improves() -> None:
    decision = compare(_result("1", 0.80, 1.00), _result("2", 0.82, 1.001), PromotionPolicy(tolerance=0.005))
    assert decision.promote, decision.reason
    by_task = {c.task: c for c in decision.comparisons}
    assert by_task["like"].metric == "auc" and by_task["rating"].metric == "rmse"
    assert by_task["rating"].gain < 0 and by_task["rating"].within_tolerance
    assert decision.average_gain == pytest.approx((0.025 - 0.001) / 2)


def test_rejects_a_task_worse_than_the_tolerance_even_if_the_average_improves() -> None:
    decision = compare(_result("1", 0.80, 1.00), _result("2", 0.90, 1.02), PromotionPolicy(tolerance=0.005))
    assert not decision.promote
    assert "rating rmse 1.0000 -> 1.0200" in decision.reason
    assert decision.average_gain > 0


def test_rejects_without_enough_average_gain() -> None:
    same = compare(_result("1", 0.80, 1.00), _result("2", 0.80, 1.00), PromotionPolicy())
    assert not same.promote and "does not exceed" in same.reason
    small = compare(_result("1", 0.80, 1.00), _result("2", 0.801, 1.00), PromotionPolicy(min_average_gain=0.01))
    assert not small.promote


def test_primary_metric_is_configurable_and_validated() -> None:
    decision = compare(_result("1", 0.80, 1.00), _result("2", 0.80, 0.95),
                       PromotionPolicy(primary_metrics={"binary": "gauc"}))
    assert {c.metric for c in decision.comparisons} == {"gauc", "rmse"}
    with pytest.raises(ValueError, match="primary metric 'calibration' for binary tasks is not one of"):
        PromotionPolicy(primary_metrics={"binary": "calibration"})
    with pytest.raises(ValueError, match="tolerance must be"):
        PromotionPolicy(tolerance=-0.1)


def test_refuses_results_from_different_data_and_dropped_tasks() -> None:
    with pytest.raises(ValueError, match="different data"):
        compare(_result("1", 0.8, 1.0, rows=100), _result("2", 0.9, 0.9, rows=99), PromotionPolicy())
    challenger = _result("2", 0.9, 0.9)
    challenger.tasks = challenger.tasks[:1]
    decision = compare(_result("1", 0.8, 1.0), challenger, PromotionPolicy())
    assert not decision.promote and "['rating']" in decision.reason


def test_undefined_challenger_metric_is_a_rejection() -> None:
    decision = compare(_result("1", 0.8, 1.0), _result("2", math.nan, 0.9), PromotionPolicy())
    assert not decision.promote and "undefined" in decision.reason
