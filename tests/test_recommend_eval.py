"""The top-N evaluation (jobs/evaluate/recommend.py) on the session's tiny MovieLens: every system on
the same users and seen sets, full ranking, paired intervals, and what it refuses."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from jobs.evaluate.recommend import GREC, RecommendEvalConfig, evaluate_recommend, target_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loaded_and_stage(serving_app):
    from registry.models import load_registered
    from registry.retrieval_index import load_recommendation_stage
    from registry.tracking import use_tracking_uri

    with use_tracking_uri(serving_app.tracking_uri):
        return (load_registered(f"models:/{serving_app.model_name}/1"),
                load_recommendation_stage(serving_app.model_name, "1"))


def test_every_system_is_judged_on_the_same_users_with_intervals_against_grec(serving_app, loaded_and_stage):
    loaded, stage = loaded_and_stage
    config = RecommendEvalConfig(task="like", k=5, recall_at=10, peers=("popularity", "recent_popularity", "ease"),
                                 trials=2, resamples=50)
    result = evaluate_recommend(loaded, stage, serving_app.prepared, "test", config)
    assert result["task"] == "like" and result["users"] > 0 and result["settings"]["full_ranking"]
    assert set(result["systems"]) == {GREC, "popularity", "recent_popularity", "ease"}
    for name, metrics in result["systems"].items():
        assert 0.0 <= metrics["ndcg@5"] <= 1.0 and 0.0 <= metrics["hr@5"] <= 1.0
        assert len(result["per_user"][name]["ndcg@5"]) == result["users"]
    for peer, intervals in result["intervals_vs_grec"].items():
        difference = np.mean(result["per_user"][peer]["ndcg@5"]) - np.mean(result["per_user"][GREC]["ndcg@5"])
        assert intervals["ndcg@5"]["difference"] == pytest.approx(difference)
        assert intervals["ndcg@5"]["low"] <= difference <= intervals["ndcg@5"]["high"]
    assert result["details"]["ease"]["trials"] == 2 and "l2" in result["details"]["ease"]["params"]
    # The report (grec evaluate's result.json) names the users as the dataset does: plain JSON values.
    assert json.loads(json.dumps(result))["user_ids"] == result["user_ids"]


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in ("seconds", "ranking_cpu_s",
                                                                             "tuning_cpu_s", "fit_cpu_s")}
    return value


def test_the_result_does_not_depend_on_how_many_users_are_held_at_once(serving_app, loaded_and_stage):
    loaded, stage = loaded_and_stage
    config = RecommendEvalConfig(task="like", k=5, recall_at=10, peers=("popularity", "recent_popularity", "ease"),
                                 trials=2, resamples=50)
    results = [_without_timings(evaluate_recommend(loaded, stage, serving_app.prepared, "test",
                                                   replace(config, held_users=held))) for held in (1, 3, 256)]
    assert results[0]["users"] > 3 and results[0] == results[1] == results[2]


def test_the_stage_is_not_judged_on_a_split_it_was_fitted_on(serving_app, loaded_and_stage):
    loaded, stage = loaded_and_stage
    with pytest.raises(ValueError, match="fitted on the validation split"):
        evaluate_recommend(loaded, stage, serving_app.prepared, "validation", RecommendEvalConfig(peers=()))


def test_the_default_target_is_the_implicit_feedback_task(serving_app):
    assert target_task(serving_app.prepared.definition(), None) == ("rated", None)
    assert target_task(serving_app.prepared.definition(), "like") == ("like", "label_like")
    with pytest.raises(ValueError, match="binary tasks"):
        target_task(serving_app.prepared.definition(), "rating")
