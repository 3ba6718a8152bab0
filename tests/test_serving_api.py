"""The endpoint over real HTTP: one Serve application for the whole session (tests/conftest.py)."""

from __future__ import annotations

import time

import httpx
import pytest

pytestmark = pytest.mark.slow


def _error(response: httpx.Response, status: int, kind: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["kind"] == kind
    assert error["message"] and error["request_id"]
    return error


def test_recommend_ranks_the_given_candidates(client, serving_app):
    user, items = serving_app.known_user, serving_app.known_items[:20]
    response = client.post("/v1/recommend", json={"user_id": user, "task": "like", "candidates": items, "k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"]["name"] == serving_app.model_name and body["model"]["version"]
    assert body["cold_start"] is False and body["features_degraded"] is False
    assert body["candidates_from"] == "request"
    ranks = [item["rank_score"] for item in body["items"]]  # by the blend fitted for the task
    assert len(ranks) == 5 and ranks == sorted(ranks, reverse=True)
    assert {item["item_id"] for item in body["items"]} <= set(items)
    assert all(0.0 <= item["score"] <= 1.0 for item in body["items"])  # a binary task answers probabilities


def test_recommend_without_candidates_retrieves_from_the_catalog(client, serving_app):
    response = client.post("/v1/recommend", json={"user_id": serving_app.known_user, "task": "rating", "k": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["candidates_from"] == "retrieval"  # the session's version has a recommendation stage
    # the stage's catalogue holds validation's new items too, which the ranker scores out of vocabulary
    assert len(body["items"]) == 7 and any(item["known_item"] for item in body["items"])


def test_unknown_user_is_served_cold_and_flagged(client, serving_app):
    response = client.post("/v1/recommend", json={"user_id": 987_654_321, "task": "like",
                                                  "candidates": serving_app.known_items[:3]})
    assert response.status_code == 200, response.text
    assert response.json()["cold_start"] is True


def test_unknown_item_is_scored_out_of_vocabulary(client, serving_app):
    unknown = 10**12
    response = client.post("/v1/recommend", json={"user_id": serving_app.known_user, "task": "like",
                                                  "candidates": [unknown, serving_app.known_items[0]], "k": 2})
    assert response.status_code == 200, response.text
    known = {item["item_id"]: item["known_item"] for item in response.json()["items"]}
    assert known == {unknown: False, serving_app.known_items[0]: True}


def test_score_answers_each_row_in_order(client, serving_app):
    user, items = serving_app.known_user, serving_app.known_items[:3]
    rows = [{"user_id": user, "item_id": items[0], "task": "like"},
            {"user_id": 987_654_321, "item_id": items[1], "task": "rating"},
            {"user_id": user, "item_id": items[2], "task": "like"}]
    response = client.post("/v1/score", json={"rows": rows})
    assert response.status_code == 200, response.text
    scores = response.json()["scores"]
    assert [(s["user_id"], s["item_id"], s["task"]) for s in scores] == [
        (r["user_id"], r["item_id"], r["task"]) for r in rows]
    assert [s["cold_start"] for s in scores] == [False, True, False]


def test_tasks_and_model_describe_the_loaded_version(client, serving_app):
    tasks = client.get("/v1/tasks").json()
    assert {t["name"] for t in tasks["tasks"]} == {"like", "love", "rating"}
    model = client.get("/v1/model").json()
    assert model["name"] == serving_app.model_name and model["alias"] == "champion"
    assert model["per_task_submodels"] is True  # task routing: each task has its own sub-model
    assert model["loaded_at"] and model["tasks"] == [t["name"] for t in tasks["tasks"]]


@pytest.mark.parametrize(("body", "kind", "mentions"), [
    ({"user_id": 1, "task": "no_such_task", "candidates": [1]}, "unknown_task", "no_such_task"),
    ({"user_id": "one", "task": "like", "candidates": [1]}, "invalid_request", "user_id"),
    ({"user_id": 1, "task": "like", "candidates": "1,2"}, "invalid_request", "candidates"),
    ({"user_id": 1, "task": "like", "candidates": []}, "invalid_request", "empty"),
    ({"user_id": 1, "task": "like", "candidates": [1], "k": 0}, "invalid_request", "k"),
    ({"task": "like"}, "invalid_request", "user_id"),
    ({"user_id": 1, "task": "like", "candidates": [1], "context": {"weather": "sunny"}},
     "unknown_context_feature", "weather"),
])
def test_bad_requests_are_4xx_with_a_message(client, body, kind, mentions):
    error = _error(client.post("/v1/recommend", json=body), 422, kind)
    assert mentions in error["message"]


def test_too_many_candidates_are_refused(client, serving_app):
    candidates = list(range(serving_app.max_candidates + 1))
    error = _error(client.post("/v1/recommend", json={"user_id": 1, "task": "like", "candidates": candidates}),
                   422, "too_many_candidates")
    assert str(serving_app.max_candidates) in error["message"]


def test_malformed_json_is_400(client):
    response = client.post("/v1/recommend", content=b'{"user_id": 1, "task": ',
                           headers={"content-type": "application/json"})
    _error(response, 400, "malformed_json")


def test_oversized_payload_is_413(client, serving_app):
    response = client.post("/v1/score", content=b"x" * (serving_app.max_body_bytes + 1),
                           headers={"content-type": "application/json"})
    _error(response, 413, "payload_too_large")


def test_v1_needs_the_bearer_token_but_health_does_not(serving_app):
    with httpx.Client(base_url=serving_app.base_url, timeout=60) as anonymous:
        _error(anonymous.get("/v1/model"), 401, "unauthorized")
        _error(anonymous.get("/v1/tasks", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        assert anonymous.head("/healthz").status_code == 200
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["model_version"] and ready.json()["features_degraded"] is False


def test_auth_is_checked_before_the_body_is_read(serving_app):
    # A malformed body from an unauthenticated client learns nothing about the body: 401, not 400.
    with httpx.Client(base_url=serving_app.base_url, timeout=60) as anonymous:
        response = anonymous.post("/v1/recommend", content=b'{"user_id": ',
                                  headers={"content-type": "application/json"})
    _error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"] == "Bearer"


def test_a_body_that_is_not_json_is_415_saying_so(client):
    response = client.post("/v1/recommend", content=b"user_id=1&task=like", headers={"content-type": "text/plain"})
    error = _error(response, 415, "unsupported_media_type")
    assert "application/json" in error["message"] and "text/plain" in error["message"]


def test_a_wrong_method_is_405_with_allow(client):
    response = client.delete("/v1/recommend")
    _error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


def test_request_id_is_echoed_in_header_and_errors(client):
    response = client.post("/v1/recommend", json={"user_id": 1, "task": "nope", "candidates": [1]},
                           headers={"X-Request-ID": "trace-me-42"})
    assert response.headers["x-request-id"] == "trace-me-42"
    assert response.json()["error"]["request_id"] == "trace-me-42"


def _metric_value(text: str, sample: str) -> float:
    """The value of one sample line (name with its labels, as exposed) in a Prometheus text."""
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_are_recorded_by_every_deployment_and_summed(client, serving_app):
    """GET /metrics serves what the ingress and the scorer replicas recorded (through Ray's
    metrics agent), summed over processes: the counters move by what this test sent."""
    cold = "ray_grec_cold_start_total"
    like = 'ray_grec_requests_by_task_total{route="recommend",task="like"}'
    unknown = 'ray_grec_errors_total{kind="unknown_task"}'
    before = client.get("/metrics").text
    client.post("/v1/recommend", json={"user_id": serving_app.known_user, "task": "like",
                                       "candidates": serving_app.known_items[:5]})
    client.post("/v1/recommend", json={"user_id": 987_654_320, "task": "like", "candidates": [1]})
    client.post("/v1/recommend", json={"user_id": 1, "task": "nope", "candidates": [1]})
    # Replicas report every second (tests/conftest.py), each process on its own clock: wait for the
    # scorer's counters and the ingress's alike.
    deadline = time.monotonic() + 30
    while True:
        text = client.get("/metrics").text
        if (_metric_value(text, like) >= _metric_value(before, like) + 2
                and _metric_value(text, cold) >= _metric_value(before, cold) + 1
                and _metric_value(text, unknown) >= _metric_value(before, unknown) + 1) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert _metric_value(text, like) >= _metric_value(before, like) + 2  # the scorer's ranking
    assert _metric_value(text, cold) >= _metric_value(before, cold) + 1  # the scorer's store lookup
    assert "ray_grec_ranker_batch_requests_count " in text  # the scorer's forward
    assert 'ray_grec_request_latency_seconds_bucket{le="10.0",route="/v1/recommend",status="200"}' in text
    assert _metric_value(text, unknown) >= _metric_value(before, unknown) + 1  # the ingress
    assert 'task="nope"' not in text  # unknown task names never become label values
    assert "WorkerId" not in text  # summed over the replicas' processes


def test_openapi_says_exactly_what_the_server_accepts(client, serving_app):
    schema = client.get("/openapi.json").json()
    assert {"/v1/recommend", "/v1/score", "/v1/tasks", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(
        schema["paths"])
    recommend = schema["paths"]["/v1/recommend"]["post"]
    assert {"200", "401", "413", "415", "422", "503", "504"} <= set(recommend["responses"])
    assert "Retry-After" in recommend["responses"]["503"]["headers"]
    assert recommend["security"] == [{"bearer": []}]
    body = schema["components"]["schemas"]["RecommendRequest"]["properties"]
    tasks = [t["name"] for t in client.get("/v1/tasks").json()["tasks"]]
    # the served model's tasks and those its recommendation stage ranks for, not any string
    assert body["task"]["enum"] == client.get("/v1/model").json()["recommend_tasks"]
    assert set(tasks) < set(body["task"]["enum"])
    assert body["k"]["maximum"] == serving_app.config.max_k
    candidates = body["candidates"]["anyOf"][0]
    assert (candidates["minItems"], candidates["maxItems"]) == (1, serving_app.max_candidates)
    assert body["user_id"]["type"] == "integer" and candidates["items"]["type"] == "integer"  # MovieLens ids
    rows = schema["components"]["schemas"]["ScoreRequest"]["properties"]["rows"]
    assert (rows["minItems"], rows["maxItems"]) == (1, serving_app.max_candidates)
    assert schema["components"]["schemas"]["ScoreRow"]["properties"]["task"]["enum"] == tasks


def test_score_checks_tasks_and_distinct_users_before_any_lookup(client, serving_app):
    items = serving_app.known_items
    rows = [{"user_id": serving_app.known_user, "item_id": items[0], "task": "like"},
            {"user_id": serving_app.known_user, "item_id": items[1], "task": "no_such_task"}]
    error = _error(client.post("/v1/score", json={"rows": rows}), 422, "unknown_task")
    assert "no_such_task" in error["message"]
    limit = serving_app.config.max_score_groups
    many_users = [{"user_id": user, "item_id": items[0], "task": "like"} for user in range(limit + 1)]
    error = _error(client.post("/v1/score", json={"rows": many_users}), 422, "too_many_groups")
    assert str(limit) in error["message"]
    # Up to the limit, one request with many users and two tasks is answered row for row.
    rows = [{"user_id": user, "item_id": items[user % 5], "task": ("like", "rating")[user % 2]}
            for user in range(limit)]
    response = client.post("/v1/score", json={"rows": rows})
    assert response.status_code == 200, response.text
    assert [(s["user_id"], s["task"]) for s in response.json()["scores"]] == [(r["user_id"], r["task"]) for r in rows]
