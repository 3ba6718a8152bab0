"""Client errors keep their status and message across replicas, and slow requests end with a 504."""

from __future__ import annotations

import asyncio
import pickle
import time
from types import SimpleNamespace

import pytest

from serving.config import ServingConfig
from serving.errors import BadRequestError, RequestTimeoutError, ServingError, UnknownTaskError


def test_errors_cross_process_boundaries_intact():
    # Replica errors travel pickled (scorer -> ingress); their status and message must survive.
    error = pickle.loads(pickle.dumps(UnknownTaskError("clik", ["click", "like"])))
    assert isinstance(error, ServingError)
    assert (error.status_code, error.kind) == (422, "unknown_task")
    assert "clik" in error.message and "click" in error.message


def test_a_request_over_its_time_limit_is_a_504_saying_so():
    from serving.ingress import Ingress

    ingress = SimpleNamespace(_config=ServingConfig(model_uri="models:/m@champion", request_timeout_s=0.05),
                              _health=SimpleNamespace(call=lambda response: response))
    seen = []

    async def work(deadline: float) -> None:
        seen.append(deadline)  # the deadline handed to the scorer
        await asyncio.sleep(5)

    with pytest.raises(RequestTimeoutError, match="0.05 s") as raised:
        asyncio.run(Ingress.func_or_class._within_deadline(ingress, work))
    assert (raised.value.status_code, raised.value.kind) == (504, "timeout")
    assert len(seen) == 1 and seen[0] <= time.time()

    async def refused(deadline: float) -> ServingError:  # the scorer answers a client error as a value
        return BadRequestError("no such thing")

    with pytest.raises(BadRequestError, match="no such thing"):
        asyncio.run(Ingress.func_or_class._within_deadline(ingress, refused))


def test_a_down_deployment_fails_calls_at_once_and_an_answer_brings_it_back():
    """DeploymentHealth: a deployment is down when Serve reports no running replica, and a call
    waiting on it then ends with 503 at once; after a replica died under a call, new calls fail until
    Serve reports a running replica; a full queue is 'overloaded'; a slow call is never death."""
    from ray.exceptions import ActorDiedError
    from ray.serve.exceptions import BackPressureError

    from serving.errors import OverloadedError, UnavailableError
    from serving.health import DeploymentHealth

    serve_reports = {"running": 0}

    async def running() -> int | None:
        return serve_reports["running"]

    async def died() -> None:
        raise ActorDiedError()

    async def full() -> None:
        raise BackPressureError(num_queued_requests=8, max_queued_requests=8)

    async def scenario() -> None:
        health = DeploymentHealth("ranker", running, period_s=0.01, retry_after_s=1, down_period_s=0.01)
        waiting = asyncio.ensure_future(health.call(asyncio.sleep(30)))
        await asyncio.sleep(0)
        health.start()  # Serve reports no running replica: the waiting call is abandoned
        with pytest.raises(UnavailableError, match="ranker is not answering"):
            await asyncio.wait_for(waiting, 5)
        with pytest.raises(UnavailableError):
            await health.call(asyncio.sleep(0))
        serve_reports["running"] = 1
        while not health.up:
            await asyncio.sleep(0.01)
        assert await health.call(asyncio.sleep(0, result="scored")) == "scored"
        serve_reports["running"] = None  # the controller does not answer: nothing changes
        with pytest.raises(UnavailableError):
            await health.call(died())  # the replica died under this call
        assert not health.up
        await asyncio.sleep(0.1)
        assert not health.up
        serve_reports["running"] = 1  # another replica (or the replacement) runs
        while not health.up:
            await asyncio.sleep(0.01)
        with pytest.raises(OverloadedError):
            await health.call(full())
        # A busy deployment: a call that takes far longer than the watcher's period is answered.
        assert await health.call(asyncio.sleep(0.5, result="late")) == "late"
        assert health.up
        health.stop()

    asyncio.run(scenario())


class _Connection:
    """One HTTP request as the ingress's ASGI middleware sees it: its body arrives in `chunks`
    (a number: the client pauses that many seconds; None: the client stops sending), and what the
    middleware sends back."""

    def __init__(self, app, path: str, chunks: list[bytes | float | None], token: str = "t") -> None:
        self.chunks = list(chunks)
        self.sent: list[dict] = []
        declared = sum(len(c) for c in chunks if isinstance(c, bytes)) + (100 if None in chunks else 0)
        self.scope = {"type": "http", "method": "POST", "path": path, "root_path": "", "app": app,
                      "headers": [(b"authorization", f"Bearer {token}".encode()),
                                  (b"content-type", b"application/json"),
                                  (b"content-length", str(declared).encode())]}

    async def receive(self) -> dict:
        chunk = self.chunks.pop(0)
        if chunk is None:
            await asyncio.sleep(3600)  # a client that stopped sending
        if isinstance(chunk, float):
            await asyncio.sleep(chunk)
            chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(next((m["headers"] for m in self.sent if m["type"] == "http.response.start"), []))


def test_admission_decides_on_arrival_and_slow_bodies_give_their_slot_back():
    """A ranking request takes its slot of max_in_flight when it arrives, so one that finds none is
    refused at once with Retry-After, its body never read. A body still arriving after
    admission_body_grace_s gives the slot back: clients that stall mid-body hold none past it and are
    answered 408 past body_timeout_s, and one whose body comes late takes a slot then. A too large
    body is a 413."""
    from starlette.applications import Starlette

    from serving.http import RequestEnvelope

    app = Starlette()
    app.state.api_token, app.state.max_body_bytes, app.state.retry_after_s = "t", 1024, 1
    app.state.max_in_flight, app.state.in_flight = 2, 0
    app.state.body_timeout_s, app.state.admission_body_grace_s = 0.5, 0.1
    release = asyncio.Event()

    async def ranking(scope, receive, send) -> None:  # the routes behind the door: held until released
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    envelope = RequestEnvelope(ranking)

    def start(connection: _Connection) -> asyncio.Future:
        return asyncio.ensure_future(envelope(connection.scope, connection.receive, connection.send))

    async def scenario() -> None:
        stalled = [_Connection(app, "/v1/score", [b"{", None]) for _ in range(10)]
        stalled_tasks = [start(c) for c in stalled]
        await asyncio.sleep(0.02)
        assert app.state.in_flight == 2  # the first two took a slot on arrival; eight were refused
        assert sorted(c.status or 0 for c in stalled) == [0, 0] + [503] * 8
        turned_away = _Connection(app, "/v1/score", [b"{}"])
        await envelope(turned_away.scope, turned_away.receive, turned_away.send)
        assert turned_away.status == 503 and turned_away.headers[b"retry-after"] == b"1"
        assert turned_away.chunks == [b"{}"]  # refused before its body was read
        await asyncio.sleep(0.15)
        assert app.state.in_flight == 0  # past the grace, the stalled bodies hold nothing

        late = _Connection(app, "/v1/score", [0.2, b"{}"])  # its body comes after the grace
        late_task = start(late)
        await asyncio.sleep(0.15)
        working = [_Connection(app, "/v1/score", [b"{}"]) for _ in range(2)]
        working_tasks = [start(working[0])]
        await asyncio.sleep(0.1)  # the late body has arrived and taken the other slot
        assert app.state.in_flight == 2
        working_tasks.append(start(working[1]))
        await asyncio.sleep(0.02)
        assert working[1].status == 503
        release.set()
        await asyncio.gather(late_task, *working_tasks)
        assert [late.status, working[0].status] == [200, 200]
        await asyncio.wait_for(asyncio.gather(*stalled_tasks), 5)
        assert sorted(c.status for c in stalled[:2]) == [408, 408]
        assert b"body_timeout" in stalled[0].sent[-1]["body"]
        too_large = _Connection(app, "/v1/score", [b"x" * 2000])
        await envelope(too_large.scope, too_large.receive, too_large.send)
        assert too_large.status == 413
        assert app.state.in_flight == 0

    asyncio.run(scenario())
