"""Client errors keep their status and message across replicas, and slow requests end with a 504."""

from __future__ import annotations

import asyncio
import pickle
import time
from types import SimpleNamespace

import pytest

from serving.config import ServingConfig
from serving.errors import RequestTimeoutError, ServingError, UnknownTaskError


def test_errors_cross_process_boundaries_intact():
    # Replica errors travel pickled (ranker -> ingress); their status and message must survive.
    error = pickle.loads(pickle.dumps(UnknownTaskError("clik", ["click", "like"])))
    assert isinstance(error, ServingError)
    assert (error.status_code, error.kind) == (422, "unknown_task")
    assert "clik" in error.message and "click" in error.message


def test_a_request_over_its_time_limit_is_a_504_saying_so():
    from serving.ingress import Ingress

    ingress = SimpleNamespace(_config=ServingConfig(model_uri="models:/m@champion", request_timeout_s=0.05))
    seen = []

    async def work(deadline: float) -> None:
        seen.append(deadline)  # the deadline handed to the deployments
        await asyncio.sleep(5)

    with pytest.raises(RequestTimeoutError, match="0.05 s") as raised:
        asyncio.run(Ingress.func_or_class._within_deadline(ingress, work))
    assert (raised.value.status_code, raised.value.kind) == (504, "timeout")
    assert len(seen) == 1 and seen[0] <= time.time()


def test_a_down_deployment_fails_calls_at_once_and_an_answer_brings_it_back():
    """DeploymentHealth: a call waiting on a deployment found down ends with 503 at once; after a
    replica died under a call, new calls fail until a probe answers; a full queue is 'overloaded'
    and a slow probe while calls keep answering is not death."""
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    from serving.errors import OverloadedError, UnavailableError
    from serving.health import DeploymentHealth

    answers = {"probe": "fail"}

    async def probe() -> None:
        if answers["probe"] == "fail":
            raise ConnectionError("no replica")
        if answers["probe"] == "slow":
            await asyncio.sleep(30)

    async def died() -> None:
        raise ActorDiedError()

    async def full() -> None:
        raise BackPressureError(num_queued_requests=8, max_queued_requests=8)

    async def scenario() -> None:
        health = DeploymentHealth("ranker", probe, period_s=0.01, timeout_s=0.2, retry_after_s=1, down_period_s=0.01)
        waiting = asyncio.ensure_future(health.call(asyncio.sleep(30)))
        await asyncio.sleep(0)
        health.mark_down("probe failed")
        with pytest.raises(UnavailableError, match="ranker is not answering"):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(UnavailableError):
            await health.call(asyncio.sleep(0))
        health.start()
        answers["probe"] = "ok"
        while not health.up:
            await asyncio.sleep(0.01)
        assert await health.call(asyncio.sleep(0, result="scored")) == "scored"
        with pytest.raises(UnavailableError):
            await health.call(died())  # the replica died under this call
        assert not health.up
        while not health.up:  # the probe answers: another replica (or the replacement) is there
            await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError):
            await health.call(full())
        answers["probe"] = "slow"  # probes time out, but calls keep answering: busy, not down
        for _ in range(40):
            assert await health.call(asyncio.sleep(0.01, result="ok")) == "ok"
        assert health.up
        health.stop()

    asyncio.run(scenario())
