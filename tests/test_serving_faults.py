"""The endpoint under faults and overload, on the session's Serve application (tests/conftest.py):
a scorer replica killed for real, more requests than it admits, deadlines that reach the replicas.
Every failure is a JSON 503 with Retry-After or a 4xx, never a 500, and never a request left to its
deadline."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import pytest
import ray
from ray import serve

from feature_store.online import open_online_store
from serving.errors import RequestTimeoutError
from serving.features import RowsQuery, StoreGuard, request_rows
from serving.ranking import RankRequest
from serving.schemas import RecommendRequest, ScoreRequest

pytestmark = pytest.mark.slow

APP = "grec-test"  # the session application's name (tests/conftest.py)


def _headers(app) -> dict[str, str]:
    return {"Authorization": f"Bearer {app.token}"}


def _is_retryable_503(response: httpx.Response, kind: str) -> bool:
    return (response.status_code == 503 and response.json()["error"]["kind"] == kind
            and int(response.headers["retry-after"]) >= 1)


def _served_version(app) -> str:
    return httpx.get(f"{app.base_url}/v1/model", headers=_headers(app), timeout=60).json()["version"]


def test_a_killed_scorer_gives_fast_503s_and_failing_readiness_then_recovers(serving_app):
    payload = {"user_id": serving_app.known_user, "task": "like", "candidates": serving_app.known_items[:20], "k": 3}
    [replica] = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["name"].startswith(f"SERVE_REPLICA::{APP}#Scorer#")]
    # The client gives up long before the endpoint's 10 s deadline: a request held until its deadline
    # would fail this test with a client timeout.
    with httpx.Client(base_url=serving_app.base_url, headers=_headers(serving_app), timeout=5) as client:
        assert client.post("/v1/recommend", json=payload).status_code == 200
        ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
        statuses, ready_statuses, unavailable, not_ready = [], [], 0, 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            response = client.post("/v1/recommend", json=payload)
            statuses.append(response.status_code)
            unavailable += _is_retryable_503(response, "unavailable")
            ready = client.get("/readyz")
            ready_statuses.append(ready.status_code)
            not_ready += ready.status_code == 503 and ready.json()["error"]["kind"] in ("unavailable",
                                                                                         "model_not_ready")
            if unavailable and not_ready and response.status_code == 200 and ready.status_code == 200:
                break
            time.sleep(0.1)
    assert set(statuses) <= {200, 503}, statuses
    assert unavailable >= 1 and not_ready >= 1, (statuses, ready_statuses)
    assert statuses[-1] == 200 and ready_statuses[-1] == 200, "the replacement replica never took over"


def test_more_requests_than_admitted_get_503_with_retry_after(serving_app):
    """Far more concurrent requests than the endpoint admits: every answer is a 200 or a 503 with
    Retry-After (no other 5xx); the excess is refused with 503 overloaded, the rest answered."""
    payload = {"user_id": serving_app.known_user, "task": "like", "k": 3,
               "candidates": serving_app.known_items[: serving_app.max_candidates]}

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=serving_app.base_url, headers=_headers(serving_app), timeout=60,
                                     limits=limits) as client:
            return await asyncio.gather(*(client.post("/v1/recommend", json=payload) for _ in range(200)))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses
    assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 503)
    assert any(_is_retryable_503(r, "overloaded") for r in responses), statuses


def test_deadlines_reach_the_scorer_and_its_batches(serving_app):
    """A call whose deadline has passed is not worked on: the scorer answers a whole request, and
    its batched forward a request's rows, with a timeout."""
    version = _served_version(serving_app)
    scorer = serve.get_deployment_handle("Scorer", app_name=APP).options(multiplexed_model_id=version)
    body = RecommendRequest(user_id=serving_app.known_user, task="like", candidates=serving_app.known_items[:3], k=3)
    score = ScoreRequest(rows=[{"user_id": serving_app.known_user, "item_id": item, "task": "like"}
                               for item in serving_app.known_items[:3]])
    late = scorer.recommend.remote(body, None, "late", time.time() - 1).result(timeout_s=60)
    assert isinstance(late, RequestTimeoutError)
    assert isinstance(scorer.score.remote(score, [[0, 1, 2]], "late", time.time() - 1).result(timeout_s=60),
                      RequestTimeoutError)
    in_time = scorer.recommend.remote(body, None, "in-time", time.time() + 60).result(timeout_s=60)
    assert in_time.request_id == "in-time" and len(in_time.items) == 3
    assert in_time.model.version == version  # the version the call was pinned to
    with open_online_store(serving_app.online_store) as store:
        found = request_rows(StoreGuard(store, "degrade", 1.0), serving_app.prepared.definition(),
                             RowsQuery(serving_app.known_user, serving_app.known_items[:3]))
    late_rows = scorer.forward.remote(RankRequest("like", found.rows, time.time() - 1)).result(timeout_s=60)
    assert isinstance(late_rows.error, RequestTimeoutError) and late_rows.scores == []


def _read_response(connection: socket.socket) -> bytes:
    """One HTTP response, head and body (by its Content-Length), from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(4096) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length and (chunk := connection.recv(4096)):
        body += chunk
    return head + b"\r\n\r\n" + body


def test_slow_bodies_do_not_lock_other_clients_out(serving_app):
    """60 connections with the token, `Content-Length: 100` and one byte of body: once
    admission_body_grace_s has passed they hold no admission slot, so other clients' requests are
    answered meanwhile; each stalled request is answered 408 once its body deadline passes (or 503
    with Retry-After at once, when it arrived to find every slot taken)."""
    host, port = "127.0.0.1", int(serving_app.base_url.rsplit(":", 1)[1])
    head = (f"POST /v1/score HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {serving_app.token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode()
    payload = {"rows": [{"user_id": serving_app.known_user, "item_id": item, "task": "like"}
                        for item in serving_app.known_items[:5]]}
    stalled: list[socket.socket] = []
    try:
        for _ in range(60):
            connection = socket.create_connection((host, port), timeout=60)
            connection.sendall(head)
            stalled.append(connection)
        # They reach the ingress and wait for the rest of their body, past the grace.
        time.sleep(serving_app.config.admission_body_grace_s + 0.5)
        with httpx.Client(base_url=serving_app.base_url, headers=_headers(serving_app), timeout=30) as client:
            statuses = [client.post("/v1/score", json=payload).status_code for _ in range(10)]
        assert statuses == [200] * 10
        answers = [_read_response(connection) for connection in stalled]
    finally:
        for connection in stalled:
            connection.close()
    timed_out = [answer for answer in answers if answer.startswith(b"HTTP/1.1 408")]
    refused = [answer for answer in answers if answer.startswith(b"HTTP/1.1 503")]
    assert len(timed_out) + len(refused) == len(answers), answers[:3]
    assert timed_out and all(b"body_timeout" in answer for answer in timed_out), answers[:3]
    assert all(b"overloaded" in answer and b"retry-after: 1" in answer.lower() for answer in refused), refused[:3]
