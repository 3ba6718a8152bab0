"""The default online store: one SQLite file, nothing to start (WAL mode, safe across threads).

Only a writer (`create=True`, what materialization opens) makes the file; a reader opens an
existing grec store or fails, so a wrong path never reads as a store where every user is unknown.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from feature_store.online.base import OnlineStore, OnlineStoreNotFoundError, OnlineStoreUnavailableError

# SQLite limits the number of bound parameters per statement; stay well below it.
_READ_CHUNK = 500
_TABLE = "features"
_MATERIALIZE_HINT = "write it with `grec data materialize --online-store PATH`"


class SQLiteOnlineStore(OnlineStore):
    def __init__(self, path: str | Path, *, create: bool = False) -> None:
        self.path = Path(path)
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_file():
            raise OnlineStoreNotFoundError(f"online store {self.path} does not exist; {_MATERIALIZE_HINT}")
        self._lock = threading.Lock()
        mode = "rwc" if create else "rw"  # "rw" never creates the file
        try:
            self._conn = sqlite3.connect(f"file:{quote(str(self.path.resolve()))}?mode={mode}", uri=True,
                                         check_same_thread=False, timeout=30.0)
            with self._lock, self._conn:
                if create:
                    self._conn.execute("PRAGMA journal_mode=WAL")
                    self._conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {_TABLE} (view TEXT NOT NULL, entity_key TEXT NOT NULL, "
                        "value TEXT NOT NULL, PRIMARY KEY (view, entity_key)) WITHOUT ROWID"
                    )
                self._conn.execute("PRAGMA synchronous=NORMAL")
                found = self._conn.execute(
                    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)).fetchone()
        except sqlite3.Error as err:  # not a database, no permission, a directory, ...
            raise OnlineStoreNotFoundError(f"cannot open the online store {self.path}: {err}") from None
        if found is None:
            self._conn.close()
            raise OnlineStoreNotFoundError(
                f"{self.path} is a SQLite file but not a grec online store (no '{_TABLE}' table); {_MATERIALIZE_HINT}")

    def _write_raw(self, view: str, items: Sequence[tuple[str, str]]) -> None:
        with self._lock, self._conn:
            self._conn.executemany(f"INSERT OR REPLACE INTO {_TABLE} VALUES (?, ?, ?)",
                                   [(view, key, value) for key, value in items])

    def _read_raw(self, view: str, keys: Sequence[str]) -> list[str | None]:
        found: dict[str, str] = {}
        try:
            with self._lock:
                for start in range(0, len(keys), _READ_CHUNK):
                    chunk = list(dict.fromkeys(keys[start:start + _READ_CHUNK]))
                    marks = ",".join("?" * len(chunk))
                    rows = self._conn.execute(
                        f"SELECT entity_key, value FROM {_TABLE} WHERE view = ? AND entity_key IN ({marks})",
                        [view, *chunk],
                    )
                    found.update(rows)
        except sqlite3.OperationalError as err:  # locked past the timeout, disk I/O error
            raise OnlineStoreUnavailableError(f"the online store {self.path} could not be read: {err}") from None
        return [found.get(k) for k in keys]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({str(self.path)!r})"
