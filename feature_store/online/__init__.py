"""Online stores (SQLite file by default, Redis by URL), materialization and request rows."""

from __future__ import annotations

from pathlib import Path

from feature_store.online.base import BatchRead, OnlineStore, entity_key
from feature_store.online.materialize import SEQUENCES_VIEW, MaterializeStats, materialize
from feature_store.online.redis_store import RedisOnlineStore
from feature_store.online.request import MissingFeatures, build_request_rows
from feature_store.online.sqlite_store import SQLiteOnlineStore

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_online_store(url_or_path: str | Path) -> OnlineStore:
    """`redis://host:port/db` (also rediss://, unix://) opens Redis; `sqlite:///path` or a plain
    path opens (or creates) a SQLite file."""
    text = str(url_or_path)
    if text.startswith(_REDIS_SCHEMES):
        return RedisOnlineStore(text)
    if text.startswith("sqlite:///"):
        return SQLiteOnlineStore(text[len("sqlite:///"):])
    if "://" in text:
        raise ValueError(f"unsupported online store URL {text!r}; use redis://..., sqlite:///PATH or a file path")
    return SQLiteOnlineStore(text)


__all__ = [
    "SEQUENCES_VIEW",
    "BatchRead",
    "MaterializeStats",
    "MissingFeatures",
    "OnlineStore",
    "RedisOnlineStore",
    "SQLiteOnlineStore",
    "build_request_rows",
    "entity_key",
    "materialize",
    "open_online_store",
]
