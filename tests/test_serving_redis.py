"""The endpoint over a real Redis online store that is stopped, frozen and started under it: every
answer is a 200 that says whether default features were used (`features_degraded`), readiness says
so too, and the features come back when Redis does. The "reject" policy refuses with 503 instead."""

from __future__ import annotations

import time

import httpx
import pytest
from conftest import start_loopback_redis

from feature_store.online import open_online_store

pytestmark = pytest.mark.slow


def _materialize(prepared, url: str) -> None:
    from feature_store.online import materialize

    with open_online_store(url, create=True) as online:
        materialize(prepared.offline_store(), prepared.definition(), online)


@pytest.fixture(scope="module")
def redis_app(serving_app):
    """A second application of the session's Serve (route prefix /redis) on its own Redis server,
    with the session's model; deleted at the end of the module."""
    from ray import serve

    from serving.app import build_app

    server = start_loopback_redis()
    _materialize(serving_app.prepared, server.url)
    config = serving_app.config.model_copy(update={"online_store": server.url})  # one scorer, as the session app
    serve.run(build_app(config), name="grec-redis", route_prefix="/redis")
    client = httpx.Client(base_url=f"{serving_app.base_url}/redis", timeout=30,
                          headers={"Authorization": f"Bearer {serving_app.token}"})
    yield server, client
    client.close()
    serve.delete("grec-redis")
    server.stop()


def _recommend(client: httpx.Client, app) -> dict:
    response = client.post("/v1/recommend", json={"user_id": app.known_user, "task": "like",
                                                  "candidates": app.known_items[:10], "k": 3})
    assert response.status_code == 200, response.text
    return response.json()


def test_redis_down_serves_default_features_and_says_so(redis_app, serving_app):
    server, client = redis_app
    body = _recommend(client, serving_app)
    assert (body["cold_start"], body["features_degraded"]) == (False, False)
    server.stop()
    try:
        for _ in range(5):  # through the retries, then while reads skip the store
            body = _recommend(client, serving_app)
            assert (body["cold_start"], body["features_degraded"]) == (True, True)
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["features_degraded"] is True
        score = client.post("/v1/score", json={"rows": [
            {"user_id": serving_app.known_user, "item_id": serving_app.known_items[0], "task": "like"}]})
        assert score.status_code == 200 and score.json()["features_degraded"] is True
    finally:
        server.start()
    _materialize(serving_app.prepared, server.url)  # the restarted server kept nothing
    deadline = time.monotonic() + 30
    while (body := _recommend(client, serving_app))["features_degraded"] and time.monotonic() < deadline:
        time.sleep(0.25)
    assert (body["cold_start"], body["features_degraded"]) == (False, False)
    assert client.get("/readyz").json()["features_degraded"] is False


def test_a_hung_redis_degrades_instead_of_holding_requests(redis_app, serving_app):
    server, client = redis_app
    server.pause()
    try:
        # The client waits less than the endpoint's deadline: a request held by the hung server fails here.
        response = client.post("/v1/recommend", timeout=5, json={
            "user_id": serving_app.known_user, "task": "like", "candidates": serving_app.known_items[:10]})
        assert response.status_code == 200 and response.json()["features_degraded"] is True
    finally:
        server.resume()


def test_the_reject_policy_refuses_with_503():
    from feature_store.online import OnlineStoreUnavailableError
    from serving.errors import FeaturesUnavailableError
    from serving.features import StoreGuard

    server = start_loopback_redis()
    try:
        with open_online_store(server.url, create=True) as store:
            store.write("users", {1: {"age": 30}})
            reject = StoreGuard(store, "reject", retry_interval_s=60)
            degrade = StoreGuard(store, "degrade", retry_interval_s=60)
            assert reject.run(lambda s: s.read("users", [1]).rows) == ([{"age": 30}], False)
            server.stop()
            with pytest.raises(OnlineStoreUnavailableError):
                store.read("users", [1])
            with pytest.raises(FeaturesUnavailableError) as refused:
                reject.run(lambda s: s.read("users", [1]).rows)
            assert (refused.value.status_code, refused.value.kind) == (503, "features_unavailable")
            assert degrade.run(lambda s: s.read("users", [1], defaults={"age": None}).rows) == ([{"age": None}], True)
    finally:
        server.stop()
