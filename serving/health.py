"""Whether a downstream deployment answers, as one ingress replica sees it: fail fast while it does not.

Three signals, cheapest first. A call that fails because its replica died makes the deployment
suspect: new calls get 503 at once, and a probe (a cheap call through the same handle) runs at once.
Any call or probe that answers clears it. A deployment is down when a probe fails, or gets no answer
within its timeout while no other call has answered either (a busy deployment answers its calls
even when a probe waits in its queue: that is overload, which Serve's queue limit sheds, not
death); then the calls already waiting for a replica are abandoned with 503 too. So a dead ranker
costs clients fast 503s and a failing /readyz, not a queue of requests that each wait for their
deadline, while Serve's controller replaces the replica (its own health check).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from serving.errors import OverloadedError, UnavailableError

T = TypeVar("T")

log = logging.getLogger("ray.serve")


class DeploymentHealth:
    """Tracks one deployment. `start()` inside the event loop that makes the calls."""

    def __init__(self, name: str, probe: Callable[[], Awaitable[Any]], period_s: float, timeout_s: float,
                 retry_after_s: int, down_period_s: float = 0.25) -> None:
        self.name = name
        self._probe = probe
        self._period_s = period_s
        self._timeout_s = timeout_s
        self._down_period_s = down_period_s
        self._retry_after_s = retry_after_s
        self.reason: str | None = None
        self._refusing = False  # new calls fail at once
        self._down = asyncio.Event()  # set: calls already waiting are abandoned as well
        self._wake = asyncio.Event()
        self._last_answer = time.monotonic()
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
        self._last_answer = time.monotonic()
        if self._refusing:
            log.info("%s answers again", self.name)
            self.reason = None
            self._refusing = False
            self._down.clear()

    async def _watch(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._probe(), self._timeout_s)
                self._answered()
            except BackPressureError:  # alive, only busy
                self._answered()
            except TimeoutError:
                if time.monotonic() - self._last_answer > self._timeout_s:
                    self.mark_down(f"no answer within {self._timeout_s} s")
            except Exception as err:  # noqa: BLE001 - any failure of the probe means "not answering"
                self.mark_down(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'probe failed'}")
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
