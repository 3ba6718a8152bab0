"""The offline replay of /v1/recommend (jobs/evaluate/recommend.py): its metrics and its invariants."""

from __future__ import annotations

import math

import pytest

from jobs.evaluate.recommend import SYSTEMS, RecommendEvalConfig, evaluate_recommend, hit_rate_and_ndcg, recall


def test_hit_rate_ndcg_and_recall_on_hand_computed_lists():
    shown = [["a", "b", "c"], ["d", "e", "f"]]
    truth = [{"b", "z"}, {"y"}]
    hr, ndcg = hit_rate_and_ndcg(shown, truth, k=3)
    assert hr == 0.5
    # user 1: one hit at rank 2 of 2 relevant items; user 2: none.
    expected = (1 / math.log2(3)) / (1 + 1 / math.log2(3)) / 2
    assert ndcg == pytest.approx(expected)
    assert recall([["a", "b"], ["y"]], truth, at=2) == pytest.approx((0.5 + 1.0) / 2)
    assert recall([["a", "b"], ["x", "y"]], truth, at=1) == pytest.approx(0.0)


@pytest.mark.slow
def test_replay_compares_every_system_on_the_same_users_and_never_shows_a_seen_item(serving_app):
    from registry.models import load_registered
    from registry.tracking import use_tracking_uri
    from serving.retrieval import load_version_retriever

    with use_tracking_uri(serving_app.tracking_uri):
        loaded = load_registered(f"models:/{serving_app.model_name}/1")
        retriever = load_version_retriever(loaded)
    config = RecommendEvalConfig(k=5, retrieval_size=40, recall_at=20, als_factors=8, als_iterations=3)
    result = evaluate_recommend(loaded, retriever, serving_app.prepared, "test", config)
    assert result["retrieval_index"] is True and result["task"] == "like"
    assert result["users"] > 0 and 0 <= result["warm_users"] <= result["users"]
    assert set(result["systems"]) == set(SYSTEMS)
    for metrics in result["systems"].values():
        assert metrics["seen_share"] == 0.0
        assert 0.0 <= metrics["hr@5"] <= 1.0 and 0.0 <= metrics["ndcg@5"] <= metrics["hr@5"]
        assert 0.0 <= metrics["recall@20"] <= 1.0 and 0.0 < metrics["coverage"] <= 1.0
    systems = result["systems"]
    # A ranker only reorders its source's candidates: recall of the candidate stage is the source's.
    assert systems["popularity+ranker"]["recall@20"] == systems["popularity"]["recall@20"]
    assert systems["retrieval+ranker"]["recall@20"] == systems["retrieval"]["recall@20"]
