"""The evaluation report: Markdown with every task, interval and slice, plots that exist, and a
JSON result that reads back to the same values."""

from __future__ import annotations

import json
import math

import numpy as np

from jobs.evaluate.compute import metrics_with_intervals, ranking_metrics, slice_metrics
from jobs.evaluate.plots import reliability_bins
from jobs.evaluate.report import RESULT_FILE, TaskPredictions, write_report
from jobs.evaluate.results import EvaluationResult, TaskEvaluation, non_finite_as_null


def test_reliability_bins_count_the_rows_of_each_bin() -> None:
    mean_pred, observed, rows = reliability_bins(np.array([0, 1, 1, 0]), np.array([0.05, 0.08, 0.95, 0.91]), bins=10)
    assert rows.tolist() == [2, 2]
    assert observed.tolist() == [0.5, 0.5]
    assert mean_pred[0] == np.float64(0.065)


def test_report_lists_tasks_intervals_slices_and_plots(tmp_path) -> None:
    rng = np.random.default_rng(0)
    n = 300
    users = rng.integers(0, 30, n)
    like = rng.integers(0, 2, n).astype(np.float64)
    like_p = np.clip(0.5 * like + rng.uniform(0, 0.5, n), 0, 1)
    rating = rng.uniform(1, 5, n)
    rating_p = rating + rng.normal(0, 0.5, n)
    genre = rng.integers(0, 3, n)
    genre_p = rng.dirichlet(np.ones(3), n)
    slices = {"new users": users < 10, "returning users": users >= 10}
    tasks = [
        TaskEvaluation("like", "binary", "main", n, metrics_with_intervals("binary", like, like_p, users, resamples=20),
                       slice_metrics("binary", like, like_p, users, slices),
                       ranking_metrics(rng.integers(0, 100, 30), [10], resamples=20), 30),
        TaskEvaluation("rating", "regression", "auxiliary", n,
                       metrics_with_intervals("regression", rating, rating_p, resamples=20),
                       slice_metrics("regression", rating, rating_p, None, slices)),
        TaskEvaluation("genre", "multiclass", "auxiliary", n,
                       metrics_with_intervals("multiclass", genre, genre_p, resamples=20)),
    ]
    result = EvaluationResult("models:/m@challenger", "m", "3", "toy", "test", n, tasks,
                              {"resamples": 20, "confidence": 0.95, "negatives": 99})
    predictions = {"like": TaskPredictions(like, like_p), "rating": TaskPredictions(rating, rating_p),
                   "genre": TaskPredictions(genre, genre_p)}
    report = write_report(result, predictions, tmp_path / "report")
    text = report.read_text()
    for expected in ("`models:/m@challenger`", "| like | binary | main | 300 | auc |", "| rating | regression |",
                     "hr@10", "### like", "| new users |", "plots/roc_like.png", "plots/calibration_like.png",
                     "plots/regression_rating.png", "plots/confusion_genre.png", "plots/slices.png"):
        assert expected in text, expected
    for image in (report.parent / "plots").iterdir():
        assert image.read_bytes()[:4] == b"\x89PNG"
    assert len(list((report.parent / "plots").iterdir())) == 5
    restored = EvaluationResult.from_dict(json.loads((report.parent / RESULT_FILE).read_text()))
    assert restored.task("like").metrics["auc"] == result.task("like").metrics["auc"]
    assert restored.flat_metrics() == result.flat_metrics()
    assert "like_hr_at_10" in result.flat_metrics()
    assert math.isnan(restored.task("genre").metrics["accuracy"].low) is False


def test_non_finite_numbers_are_written_as_null_at_any_depth() -> None:
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": (2, math.nan), "e": "nan"}
    assert non_finite_as_null(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, None], "e": "nan"}
    json.dumps(non_finite_as_null(value), allow_nan=False)  # strict JSON
