"""Follows a registry alias: when it moves, prepares the new version in the background and swaps it in.

Readers take `watcher.current` once per unit of work (a request) and use that object to the end,
so a swap never changes a version under a running request; rebinding one attribute is atomic in
Python, so there is no moment without a version. A failed preparation keeps the old version and is
retried at the next poll. The serving ingress is its one user: one watcher per ingress replica
decides the version of each request (serving/ingress.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class VersionWatcher(Generic[T]):
    """Holds the object loaded for the version `resolve()` names, refreshed every `interval_s`.

    `resolve` returns the version the alias points to now; `load(version)` builds the object for
    it. The first load happens in the constructor (a replica is ready only with a model), later
    ones on a daemon thread; `on_swap(loaded)` runs after each later swap. `follow=False` (a URI
    pinned to a version) loads once and never polls.
    """

    def __init__(self, what: str, resolve: Callable[[], str], load: Callable[[str], T],
                 interval_s: float, follow: bool = True, on_swap: Callable[[T], None] | None = None) -> None:
        self._what = what
        self._on_swap = on_swap
        self._resolve = resolve
        self._load = load
        self._interval_s = interval_s
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
            return False
        log.info("%s: alias moved from version %s to %s; loading", self._what, self.version, version)
        loaded = self._load(version)
        self.current, self.version = loaded, version
        if self._on_swap is not None:
            self._on_swap(loaded)
        log.info("%s: now serving version %s", self._what, version)
        return True

    def close(self) -> None:
        self._stop.set()
