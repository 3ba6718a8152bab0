"""Whether a downstream deployment can answer, as one ingress replica sees it: fail fast while it cannot.

Busy is not dead. A deployment is down only when Serve's controller has no running replica of it: a
replica stops running when its actor is gone or when it failed Serve's own health check three
times in a row (every `health_check_period_s`, each allowed `health_check_timeout_s`; answered on
the replica's Serve loop, apart from the loop its requests run on, Serve's default outside its
throughput-optimized mode). So a scorer whose batch holds its event loop for seconds is never
declared dead by the ingress; overload is Serve's queue limit's to shed. A call that fails because its replica
died makes the deployment suspect: new calls get 503 at once, and Serve's view is read at once. Any
call that answers, or a view with a running replica, clears it. When the deployment is down the
calls already waiting for a replica are abandoned with 503 too. So a dead scorer costs clients fast
503s and a failing /readyz, not a queue of requests that each wait for their deadline, while Serve's
controller replaces the replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serving.errors import OverloadedError, UnavailableError

T = TypeVar("T")

log = logging.getLogger("ray.serve")


class ServeReplicas:
    """How many replicas of each deployment of one application Serve's controller reports running.

    One status read (`serve.status()`, off the event loop) answers every deployment's question for
    `max_age_s`, so the ingress's watchers cost the controller one read per period, not one each."""

    def __init__(self, app_name: str, max_age_s: float) -> None:
        self._app_name = app_name
        self._max_age_s = max_age_s
        self._read_at = -float("inf")
        self._running: dict[str, int] | None = None
        self._lock = asyncio.Lock()
        self._failing = False

    async def running(self, deployment: str) -> int | None:
        """Running replicas of `deployment`; None when the controller did not answer (nothing learnt)."""
        async with self._lock:
            if time.monotonic() - self._read_at >= self._max_age_s:
                self._running = await self._read()
                self._read_at = time.monotonic()
        return None if self._running is None else self._running.get(deployment, 0)

    async def _read(self) -> dict[str, int] | None:
        try:
            status = await asyncio.to_thread(serve.status)
        except Exception as err:  # noqa: BLE001 - the controller restarting: keep what is known
            if not self._failing:
                log.warning("Serve's controller did not report the replicas' state: %s", err)
            self._failing = True
            return None
        self._failing = False
        application = status.applications.get(self._app_name)
        if application is None:
            return None
        return {name: deployment.replica_states.get("RUNNING", 0)
                for name, deployment in application.deployments.items()}


class DeploymentHealth:
    """Tracks one deployment. `start()` inside the event loop that makes the calls."""

    def __init__(self, name: str, running: Callable[[], Awaitable[int | None]], period_s: float,
                 retry_after_s: int, down_period_s: float = 0.25) -> None:
        """`running`: how many replicas Serve reports running (None: unknown), read every `period_s`
        (every `down_period_s` while refusing)."""
        self.name = name
        self._running = running
        self._period_s = period_s
        self._down_period_s = down_period_s
        self._retry_after_s = retry_after_s
        self.reason: str | None = None
        self._refusing = False  # new calls fail at once
        self._down = asyncio.Event()  # set: calls already waiting are abandoned as well
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def up(self) -> bool:
        return not self._refusing

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._watch(), name=f"health-{self.name}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def unavailable(self) -> UnavailableError:
        return UnavailableError(f"the {self.name} is not answering ({self.reason}); retry in {self._retry_after_s} s")

    def mark_suspect(self, reason: str) -> None:
        """A replica died under a call: refuse new calls until something answers; probe now."""
        if self.up:
            log.warning("%s: a replica died (%s): refusing its requests until it answers again", self.name, reason)
        self.reason = reason
        self._refusing = True
        self._wake.set()

    def mark_down(self, reason: str) -> None:
        if not self._down.is_set():
            log.warning("%s is not answering (%s): failing its requests fast until it answers", self.name, reason)
        self.reason = reason
        self._refusing = True
        self._down.set()
        self._wake.set()

    def _answered(self) -> None:
        if self._refusing:
            log.info("%s answers again", self.name)
            self.reason = None
            self._refusing = False
            self._down.clear()

    async def _watch(self) -> None:
        while True:
            running = await self._running()
            if running == 0:
                self.mark_down("Serve reports no running replica")
            elif running is not None:
                self._answered()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self._down_period_s if self._refusing else self._period_s)
            except TimeoutError:
                pass

    async def call(self, response: Awaitable[T]) -> T:
        """The result of a call to this deployment, or a 503 error: at once while it is refusing,
        as soon as it is found down while the call waits, when its replica dies under the call
        (UnavailableError) and when its queue is full (OverloadedError)."""
        if not self.up:
            raise self.unavailable()
        work = asyncio.ensure_future(response)
        down = asyncio.ensure_future(self._down.wait())
        try:
            await asyncio.wait({work, down}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            down.cancel()
            if not work.done():  # found down, or the caller gave up (deadline): cancel the request
                work.cancel()
        if not work.done():
            raise self.unavailable()
        try:
            result = work.result()
        except BackPressureError:
            self._answered()  # a full queue is a live deployment
            raise OverloadedError(f"the {self.name} is at capacity; retry in {self._retry_after_s} s") from None
        except (RayActorError, DeploymentUnavailableError) as err:
            self.mark_suspect(type(err).__name__)
            raise self.unavailable() from None
        self._answered()
        return result
