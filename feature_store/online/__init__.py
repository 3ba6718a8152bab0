"""Online stores (SQLite file by default, Redis by URL), materialization and request rows.

`open_online_store(location)` takes the forms of `feature_store.online.location`; a reader gets
an error for a store that is not there, never an empty one.
"""

from __future__ import annotations

from pathlib import Path

from feature_store.online.base import (BatchRead, DefaultsOnlyStore, OnlineStore, OnlineStoreNotFoundError,
                                       OnlineStoreUnavailableError, entity_key)
from feature_store.online.location import DEFAULT_ONLINE_STORE, default_online_store, parse_online_store
from feature_store.online.materialize import SEQUENCES_VIEW, MaterializeStats, materialize
from feature_store.online.redis_store import RedisOnlineStore
from feature_store.online.request import MissingFeatures, build_request_rows
from feature_store.online.seen import RECENT_VIEW, SEEN_VIEW, SeenItems, read_recent, read_seen
from feature_store.online.sqlite_store import SQLiteOnlineStore


def open_online_store(url_or_path: str | Path, *, create: bool = False) -> OnlineStore:
    """The online store at `url_or_path`. A reader (`create=False`) gets OnlineStoreNotFoundError
    for a store that does not exist or is not grec's, and OnlineStoreUnavailableError for a Redis
    it cannot reach; a writer (materialization) creates what is missing."""
    kind, location = parse_online_store(url_or_path)
    if kind == "redis":
        return RedisOnlineStore(location, create=create)
    return SQLiteOnlineStore(location, create=create)


__all__ = [
    "DEFAULT_ONLINE_STORE",
    "RECENT_VIEW",
    "SEEN_VIEW",
    "SEQUENCES_VIEW",
    "BatchRead",
    "DefaultsOnlyStore",
    "MaterializeStats",
    "MissingFeatures",
    "OnlineStore",
    "OnlineStoreNotFoundError",
    "OnlineStoreUnavailableError",
    "RedisOnlineStore",
    "SQLiteOnlineStore",
    "SeenItems",
    "build_request_rows",
    "default_online_store",
    "entity_key",
    "materialize",
    "open_online_store",
    "parse_online_store",
    "read_recent",
    "read_seen",
]
