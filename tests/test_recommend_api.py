"""POST /v1/recommend over real HTTP: retrieved, personalized, never already seen (unless asked),
and ranked by the blend fitted for the task, one task, or a blend of the request's. The session's
endpoint serves a version with a recommendation stage (tests/conftest.py)."""

from __future__ import annotations

import pytest

from feature_store.online import open_online_store, read_seen

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def seen(serving_app):
    with open_online_store(serving_app.online_store) as store:
        return read_seen(store, serving_app.known_user)


def _recommend(client, **body) -> dict:
    response = client.post("/v1/recommend", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_known_user_gets_retrieved_items_they_have_not_seen(client, serving_app, seen):
    assert len(seen) > 0
    body = _recommend(client, user_id=serving_app.known_user, task="like", k=20)
    assert body["candidates_from"] == "retrieval" and body["cold_start"] is False
    items = [item["item_id"] for item in body["items"]]
    assert len(items) == 20 and not set(items) & set(seen)
    # the stage's catalogue: the items of the training and validation events
    known = {*serving_app.prepared.read_split("train", columns=["item_id"]).column(0).to_pylist(),
             *serving_app.prepared.read_split("validation", columns=["item_id"]).column(0).to_pylist()}
    assert set(items) <= known


def test_retrieval_is_personal(client, serving_app):
    train = serving_app.prepared.read_split("train", columns=["user_id"]).column("user_id").to_pylist()
    users = list(dict.fromkeys(train))[:6]
    lists = {tuple(item["item_id"] for item in _recommend(client, user_id=user, task="like", k=10)["items"])
             for user in users}
    assert len(lists) > 1  # not one list for everyone


def test_an_unknown_user_gets_a_list_without_history(client, serving_app):
    body = _recommend(client, user_id=987_654_321, task="like", k=5)
    assert body["candidates_from"] == "retrieval" and body["cold_start"] is True and len(body["items"]) == 5
    # without history, co-visitation and the next-item model add nothing: popularity and the ranker decide
    assert all(item["source_scores"]["covisitation"] == 0.0 for item in body["items"])


def test_seen_items_are_left_out_of_given_candidates_unless_repeats_are_allowed(client, serving_app, seen):
    mine = list(seen)[:3]
    candidates = mine + serving_app.known_items[:2]
    body = _recommend(client, user_id=serving_app.known_user, task="like", candidates=candidates, k=5)
    assert body["candidates_from"] == "request"
    assert {item["item_id"] for item in body["items"]} == set(serving_app.known_items[:2])
    again = _recommend(client, user_id=serving_app.known_user, task="like", candidates=candidates, k=5,
                       exclude_seen=False)
    assert {item["item_id"] for item in again["items"]} == set(candidates)


def test_repeats_allowed_let_retrieval_offer_seen_items(client, serving_app, seen):
    # k large enough to return every candidate the stage merged
    request = {"user_id": serving_app.known_user, "task": "like", "k": 100}
    repeats = {item["item_id"] for item in _recommend(client, exclude_seen=False, **request)["items"]}
    fresh = {item["item_id"] for item in _recommend(client, **request)["items"]}
    assert repeats & set(seen) and not fresh & set(seen)
    only_seen = _recommend(client, user_id=serving_app.known_user, task="like", candidates=list(seen), k=3)
    assert only_seen["items"] == []  # every candidate seen: nothing to offer, not an error


def test_retrieved_candidates_are_ranked_by_the_blend_fitted_for_the_task(client, serving_app):
    fitted = client.get("/v1/model").json()["retrieval"]["blends"]["like"]
    body = _recommend(client, user_id=serving_app.known_user, task="like", k=10)
    assert body["blend"] == fitted
    ranks = [item["rank_score"] for item in body["items"]]
    assert ranks == sorted(ranks, reverse=True)
    sources = client.get("/v1/model").json()["retrieval"]["sources"]
    assert all(set(item["source_scores"]) == set(sources) and 0 <= item["score"] <= 1 for item in body["items"])
    # the request's own candidates are ranked the same way: the stage has terms for any item
    given = _recommend(client, user_id=serving_app.known_user, task="like", k=10,
                       candidates=serving_app.known_items[:30])
    assert given["blend"] == fitted and given["candidates_from"] == "request"
    assert all(set(item["source_scores"]) == set(sources) for item in given["items"])
    assert {item["item_id"] for item in given["items"]} <= set(serving_app.known_items[:30])


def test_a_task_alone_ranks_by_its_score(client, serving_app):
    body = _recommend(client, user_id=serving_app.known_user, task="like", k=10, blend={"like": 1.0},
                      candidates=serving_app.known_items[:30])
    assert body["blend"] is None
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True) and all(item["rank_score"] is None for item in body["items"])


def test_a_task_only_the_stage_ranks_for_is_served(client, serving_app):
    """MovieLens's implicit `rated` (every rating an interaction): the stage fitted a blend for it."""
    model = client.get("/v1/model").json()
    assert "rated" in model["recommend_tasks"] and "rated" in model["retrieval"]["blends"]
    body = _recommend(client, user_id=serving_app.known_user, task="rated", k=5)
    assert len(body["items"]) == 5 and body["blend"] == model["retrieval"]["blends"]["rated"]
    assert [item["score"] for item in body["items"]] == [item["rank_score"] for item in body["items"]]


def test_a_blend_with_one_task_ranks_as_that_task(client, serving_app):
    """Standardizing keeps a task's order, so blending `rating` alone ranks exactly as `rating`."""
    request = {"user_id": serving_app.known_user, "k": 10, "candidates": serving_app.known_items[:30]}
    by_rating = _recommend(client, task="rating", **request)
    blended = _recommend(client, task="like", blend={"rating": 2.0}, **request)
    assert blended["blend"] == {"rating": 2.0}
    assert [i["item_id"] for i in blended["items"]] == [i["item_id"] for i in by_rating["items"]]
    assert [i["task_scores"]["rating"] for i in blended["items"]] == [i["score"] for i in by_rating["items"]]


def test_a_blend_of_two_tasks_reports_both_scores_and_ranks_by_the_blend(client, serving_app):
    body = _recommend(client, user_id=serving_app.known_user, task="like", k=10,
                      blend={"like": 1.0, "rating": 0.5, "covisitation": 0.5})
    ranks = [item["rank_score"] for item in body["items"]]
    assert ranks == sorted(ranks, reverse=True)
    assert all(set(item["task_scores"]) == {"like", "rating"} for item in body["items"])


@pytest.mark.parametrize(("blend", "status", "kind"), [
    ({"no_such_task": 1.0}, 422, "unknown_task"),
    ({}, 422, "invalid_request"),
    ({"like": "1"}, 422, "invalid_request"),
])
def test_a_bad_blend_is_a_client_error(client, serving_app, blend, status, kind):
    response = client.post("/v1/recommend", json={"user_id": serving_app.known_user, "task": "like", "blend": blend})
    assert response.status_code == status, response.text
    assert response.json()["error"]["kind"] == kind


def test_the_model_route_says_the_version_has_a_recommendation_stage(client):
    retrieval = client.get("/v1/model").json()["retrieval"]
    assert retrieval["index"] is True and retrieval["items"] > 0
    assert retrieval["sources"] == ["covisitation", "next_item", "popularity"]
    assert {"like", "love", "rated"} <= set(retrieval["blends"])


def test_the_schema_names_what_a_blend_may_weigh(client):
    schema = client.get("/openapi.json").json()
    blend = schema["components"]["schemas"]["RecommendRequest"]["properties"]["blend"]["anyOf"][0]
    tasks = [t["name"] for t in client.get("/v1/tasks").json()["tasks"]]
    assert blend["propertyNames"]["enum"] == [*tasks, "covisitation", "next_item", "popularity"]
    task = schema["components"]["schemas"]["RecommendRequest"]["properties"]["task"]
    assert task["enum"] == client.get("/v1/model").json()["recommend_tasks"]
    assert blend["additionalProperties"]["maximum"] == 1000
