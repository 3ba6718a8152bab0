"""The Redis online store (a real server, given by URL): one string key per entity and view,
`<prefix>:<view>:<entity key>`, written and read with pipelined MSET / MGET."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from feature_store.online.base import OnlineStore

_CHUNK = 1000


class RedisOnlineStore(OnlineStore):
    def __init__(self, url: str, prefix: str = "grec") -> None:
        self.url = url
        self.prefix = prefix
        self._client = redis.Redis.from_url(url)
        try:
            self._client.ping()
        except redis.RedisError as err:
            raise ConnectionError(f"cannot reach the Redis online store at {url}: {err}") from err

    def _key(self, view: str, key: str) -> str:
        return f"{self.prefix}:{view}:{key}"

    def _write_raw(self, view: str, items: Sequence[tuple[str, str]]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            for start in range(0, len(items), _CHUNK):
                pipe.mset({self._key(view, k): v for k, v in items[start:start + _CHUNK]})
            pipe.execute()

    def _read_raw(self, view: str, keys: Sequence[str]) -> list[str | None]:
        with self._client.pipeline(transaction=False) as pipe:
            for start in range(0, len(keys), _CHUNK):
                pipe.mget([self._key(view, k) for k in keys[start:start + _CHUNK]])
            chunks = pipe.execute()
        return [None if v is None else v.decode("utf-8") for chunk in chunks for v in chunk]

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.url!r}, prefix={self.prefix!r})"
