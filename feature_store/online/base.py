"""The online store interface: latest feature values per entity, read in batches at serving time.

Values are JSON objects keyed by `view` and the entity key's text (`str(key)`, so 42 and "42"
name the same entity). Backends implement two raw operations; batch reads with defaults and the
list of missing keys are shared here.

Two failures are told apart: a store that is not there (a missing or unreadable SQLite file, a
Redis without grec's data) is an `OnlineStoreNotFoundError` when it is opened, never an empty store
made on the spot; a store that stops answering while in use (Redis down or hung past its retries)
raises `OnlineStoreUnavailableError` from the read, so the caller can degrade or refuse.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from feature_store.errors import FeatureStoreError


class OnlineStoreNotFoundError(FeatureStoreError):
    """The online store named does not exist or is not a grec online store."""


class OnlineStoreUnavailableError(ConnectionError):
    """The online store did not answer (after the backend's retries)."""


def entity_key(value: Any) -> str:
    return str(value)


@dataclass(frozen=True)
class BatchRead:
    """One value dict per requested key (the defaults where the key is unknown) and the keys that
    were missing, in request order."""

    rows: list[dict[str, Any]]
    missing: list[Any]


class OnlineStore(ABC):
    """Latest features per entity. Use as a context manager or call `close()`."""

    @abstractmethod
    def _write_raw(self, view: str, items: Sequence[tuple[str, str]]) -> None:
        """Stores (key, JSON text) pairs, replacing existing ones."""

    @abstractmethod
    def _read_raw(self, view: str, keys: Sequence[str]) -> list[str | None]:
        """JSON text for each key, None where absent. Raises OnlineStoreUnavailableError when the
        backend does not answer."""

    @abstractmethod
    def close(self) -> None: ...

    def write(self, view: str, records: Mapping[Any, Mapping[str, Any]]) -> None:
        """Replaces the values of the given entities in `view`."""
        self._write_raw(view, [(entity_key(k), json.dumps(v, separators=(",", ":"))) for k, v in records.items()])

    def read(self, view: str, keys: Sequence[Any], defaults: Mapping[str, Any] | None = None) -> BatchRead:
        """Values for `keys`; unknown keys get a copy of `defaults` and are listed in `missing`."""
        raw = self._read_raw(view, [entity_key(k) for k in keys])
        rows, missing = [], []
        for key, text in zip(keys, raw, strict=True):
            if text is None:
                missing.append(key)
                rows.append(dict(defaults or {}))
            else:
                rows.append(json.loads(text))
        return BatchRead(rows, missing)

    def __enter__(self) -> OnlineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DefaultsOnlyStore(OnlineStore):
    """Knows no entity: every read returns the defaults. What a caller reads from on purpose when
    the real store is unavailable and it chose to serve default features (never a stand-in for a
    store that is missing)."""

    def _write_raw(self, view: str, items: Sequence[tuple[str, str]]) -> None:
        raise TypeError("DefaultsOnlyStore holds nothing and takes no writes")

    def _read_raw(self, view: str, keys: Sequence[str]) -> list[str | None]:
        return [None] * len(keys)

    def close(self) -> None:
        pass
