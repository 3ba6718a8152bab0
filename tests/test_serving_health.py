"""Busy is not dead, on a real Serve: a scorer whose forward holds its event loop for 3 s keeps the
endpoint ready and answering; Serve's own 503s (its queue full) carry grec's Retry-After.

Each test runs an application of its own next to the session's (tests/conftest.py), in the same Serve."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import httpx
import pytest
import ray.cloudpickle
from ray import serve

from serving.app import deployment_options
from serving.config import ReplicaConfig
from serving.deployments import Scorer
from serving.ingress import Ingress

pytestmark = pytest.mark.slow

# The replicas unpickle this module's classes; they cannot import a test module by name.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

FORWARD_S = 3.0


class _SlowForward:
    """A servable whose forward holds the thread (the replica's event loop) for FORWARD_S first, as a
    large batch on a loaded machine does."""

    def __init__(self, servable: Any) -> None:
        self._servable = servable

    def __getattr__(self, name: str) -> Any:
        return getattr(self._servable, name)

    def score_tasks(self, *args: Any, **kwargs: Any) -> Any:  # what the scorer's batched forward calls
        time.sleep(FORWARD_S)
        return self._servable.score_tasks(*args, **kwargs)


class _SlowForwardScorer(Scorer.func_or_class):
    async def _pinned_model(self) -> Any:
        return _SlowForward(await super()._pinned_model())


def test_a_scorer_busy_for_seconds_is_ready_and_answers(serving_app):
    """Requests keep a scorer whose every forward takes 3 s busy (longer than readiness_timeout_s):
    /readyz answers 200 throughout and every request is answered 200, none refused as unavailable."""
    config = serving_app.config.model_copy(update={"request_timeout_s": 60.0})
    assert FORWARD_S > config.readiness_timeout_s

    def options(replicas: ReplicaConfig, access_log: bool = False) -> dict:
        return deployment_options(replicas, config.retry_after_s, access_log)

    scorer = serve.deployment(_SlowForwardScorer).options(**options(config.scorer)).bind(config)
    serve.run(Ingress.options(**options(config.ingress, True)).bind(config, scorer),
              name="grec-slow-scorer", route_prefix="/slow")
    payload = {"rows": [{"user_id": serving_app.known_user, "item_id": item, "task": "like"}
                        for item in serving_app.known_items[:5]]}

    async def load_and_probe() -> tuple[list[tuple[int, float]], list[int]]:
        answers: list[tuple[int, float]] = []
        ready: list[int] = []
        until = time.monotonic() + 4 * FORWARD_S
        async with httpx.AsyncClient(base_url=f"{serving_app.base_url}/slow", timeout=120,
                                     headers={"Authorization": f"Bearer {serving_app.token}"}) as client:
            async def request() -> None:
                while time.monotonic() < until:
                    started = time.monotonic()
                    response = await client.post("/v1/score", json=payload)
                    answers.append((response.status_code, time.monotonic() - started))

            async def probe() -> None:
                while time.monotonic() < until:
                    ready.append((await client.head("/readyz")).status_code)
                    await asyncio.sleep(0.2)

            await asyncio.gather(*(request() for _ in range(4)), probe())
        return answers, ready

    try:
        answers, ready = asyncio.run(load_and_probe())
    finally:
        serve.delete("grec-slow-scorer")
    assert ready and set(ready) == {200}, ready
    assert answers and {status for status, _ in answers} == {200}, answers
    assert max(took for _, took in answers) >= FORWARD_S  # the scorer really was busy


@serve.deployment
class _Held:
    """Holds every request a second: with one taken and one queued, the rest are Serve's to refuse."""

    async def __call__(self, request: Any) -> str:
        await asyncio.sleep(1)
        return "done"


def test_serves_own_503s_carry_the_retry_after_of_grecs(serving_app):
    retry_after_s = serving_app.config.retry_after_s + 2  # not Serve's default (no header at all)
    replicas = ReplicaConfig(num_cpus=0.01, max_ongoing_requests=1, max_queued_requests=1)
    serve.run(_Held.options(**deployment_options(replicas, retry_after_s, access_log=False)).bind(),
              name="grec-backpressure", route_prefix="/held")

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=serving_app.base_url, timeout=60) as client:
            return await asyncio.gather(*(client.get("/held") for _ in range(6)))

    try:
        responses = asyncio.run(burst())
    finally:
        serve.delete("grec-backpressure")
    refused = [r for r in responses if r.status_code == 503]
    assert refused and {r.status_code for r in responses} == {200, 503}, [r.status_code for r in responses]
    assert {r.headers.get("retry-after") for r in refused} == {str(retry_after_s)}
