"""The Redis online store (a real server, given by URL): one string key per entity and view,
`<prefix>:<view>:<entity key>`, written and read with pipelined MSET / MGET.

Every command is retried with exponential backoff (redis-py's `Retry`) on connection errors and
timeouts, with short socket timeouts, so a restarting server costs a request a fraction of a
second and a hung one cannot hold it for long; past the retries a read raises
`OnlineStoreUnavailableError`. A writer (`create=True`) marks the store with a key; a reader
finds the mark or fails, so a wrong URL or database number is an error, not a store where every
user is unknown.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from feature_store.online.base import OnlineStore, OnlineStoreNotFoundError, OnlineStoreUnavailableError

_CHUNK = 1000
# Retry policy of every command: 2 retries after 50 ms then 100 ms; each try waits at most
# 250 ms for the server. A stopped server fails a read in ~0.15 s, a hung one in ~0.9 s.
RETRIES = 2
BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 0.5
SOCKET_TIMEOUT_S = 0.25


class RedisOnlineStore(OnlineStore):
    def __init__(self, url: str, prefix: str = "grec", *, create: bool = False, retries: int = RETRIES,
                 socket_timeout_s: float = SOCKET_TIMEOUT_S) -> None:
        self.url = url
        self.prefix = prefix
        self._client = redis.Redis.from_url(
            url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s,
            retry=Retry(ExponentialBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S), retries),
        )
        marker = f"{prefix}:__online_store__"
        try:
            if create:
                self._client.set(marker, "1")
                return
            marked = self._client.exists(marker)
        except redis.RedisError as err:
            self._client.close()
            raise OnlineStoreUnavailableError(f"cannot reach the Redis online store at {url}: {err}") from err
        if not marked:
            self._client.close()
            raise OnlineStoreNotFoundError(
                f"Redis at {url} holds no grec online store (key prefix {prefix!r}); write it with "
                f"`grec data materialize --online-store {url}`")

    def _key(self, view: str, key: str) -> str:
        return f"{self.prefix}:{view}:{key}"

    def _write_raw(self, view: str, items: Sequence[tuple[str, str]]) -> None:
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(items), _CHUNK):
                    pipe.mset({self._key(view, k): v for k, v in items[start:start + _CHUNK]})
                pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as err:
            raise OnlineStoreUnavailableError(f"the Redis online store at {self.url} did not answer: {err}") from err

    def _read_raw(self, view: str, keys: Sequence[str]) -> list[str | None]:
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for start in range(0, len(keys), _CHUNK):
                    pipe.mget([self._key(view, k) for k in keys[start:start + _CHUNK]])
                chunks = pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as err:
            raise OnlineStoreUnavailableError(f"the Redis online store at {self.url} did not answer: {err}") from err
        return [None if v is None else v.decode("utf-8") for chunk in chunks for v in chunk]

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.url!r}, prefix={self.prefix!r})"
