"""Follows a registry alias: when it moves, prepares the new version in the background and swaps it in.

Readers take `watcher.current` once per unit of work (a request) and use that object to the end,
so a swap never changes a version under a running request; rebinding one attribute is atomic in
Python, so there is no moment without a version. A failed preparation keeps the old version: a
version the registry refuses (its files fail their checks: `refusal`) is recorded in `refused` and
not tried again while the alias names it; any other failure is retried at the next poll. The
serving ingress is its one user: one watcher per ingress replica decides the version of each
request (serving/ingress.py).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefusedVersion:
    """A version the alias named and that was not swapped in: why (`reason`, a stable kind, and the message)."""

    version: str
    reason: str
    message: str
    at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


class VersionWatcher(Generic[T]):
    """Holds the object loaded for the version `resolve()` names, refreshed every `interval_s`.

    `resolve` returns the version the alias points to now; `load(version)` builds the object for
    it. The first load happens in the constructor (a replica is ready only with a model), later
    ones on a daemon thread; `on_swap(loaded)` runs after each later swap. `refusal(error)` tells a
    refused version (a RefusedVersion's reason and message) from a failure worth retrying (None);
    `on_refuse` runs once per refusal. `follow=False` (a URI pinned to a version) loads once and
    never polls.
    """

    def __init__(self, what: str, resolve: Callable[[], str], load: Callable[[str], T],
                 interval_s: float, follow: bool = True, on_swap: Callable[[T], None] | None = None,
                 refusal: Callable[[Exception], tuple[str, str] | None] = lambda error: None,
                 on_refuse: Callable[[RefusedVersion], None] | None = None) -> None:
        self._what = what
        self._on_swap = on_swap
        self._resolve = resolve
        self._load = load
        self._refusal = refusal
        self._on_refuse = on_refuse
        self._interval_s = interval_s
        self.refused: RefusedVersion | None = None  # set while the alias names a refused version
        self.version = resolve()
        self.current: T = load(self.version)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if follow:
            self._thread = threading.Thread(target=self._poll, name=f"watch-{what}", daemon=True)
            self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.refresh()
            except Exception:  # keep serving the loaded version; the next poll retries
                log.exception("%s: reloading from the registry failed; still serving version %s",
                              self._what, self.version)

    def refresh(self) -> bool:
        """Loads and swaps in the alias's version if it moved; True when it swapped."""
        version = self._resolve()
        if version == self.version:
            self.refused = None
            return False
        if self.refused is not None and self.refused.version == version:
            return False  # its files will not pass until someone changes them: wait for the alias to move
        log.info("%s: alias moved from version %s to %s; loading", self._what, self.version, version)
        try:
            loaded = self._load(version)
        except Exception as error:
            refusal = self._refusal(error)
            if refusal is None:
                raise
            self.refused = RefusedVersion(version, *refusal)
            log.error("%s: version %s refused (%s), still serving version %s: %s", self._what, version,
                      refusal[0], self.version, refusal[1])
            if self._on_refuse is not None:
                self._on_refuse(self.refused)
            return False
        self.current, self.version, self.refused = loaded, version, None
        if self._on_swap is not None:
            self._on_swap(loaded)
        log.info("%s: now serving version %s", self._what, version)
        return True

    def close(self) -> None:
        self._stop.set()
