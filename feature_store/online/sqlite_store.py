"""The default online store: one SQLite file, nothing to start (WAL mode, safe across threads)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from feature_store.online.base import OnlineStore

# SQLite limits the number of bound parameters per statement; stay well below it.
_READ_CHUNK = 500


class SQLiteOnlineStore(OnlineStore):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30.0)
        with self._lock, self._conn:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS features (view TEXT NOT NULL, entity_key TEXT NOT NULL, "
                "value TEXT NOT NULL, PRIMARY KEY (view, entity_key)) WITHOUT ROWID"
            )

    def _write_raw(self, view: str, items: Sequence[tuple[str, str]]) -> None:
        with self._lock, self._conn:
            self._conn.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?)",
                                   [(view, key, value) for key, value in items])

    def _read_raw(self, view: str, keys: Sequence[str]) -> list[str | None]:
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(keys), _READ_CHUNK):
                chunk = list(dict.fromkeys(keys[start:start + _READ_CHUNK]))
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT entity_key, value FROM features WHERE view = ? AND entity_key IN ({marks})",
                    [view, *chunk],
                )
                found.update(rows)
        return [found.get(k) for k in keys]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({str(self.path)!r})"
