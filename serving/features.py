"""Feature lookup: the online store's latest values composed into raw rows of the training schema.

The rows come from `feature_store.online.build_request_rows`, the same schema the training set
has, so the ranker applies the model's own TransformSet to them exactly as training did. Ids
arrive as JSON values; they are checked against the entity key type here so that a wrong type is
a client error with a message, not an Arrow failure.

When the store stops answering (past its own retries), `StoreGuard` serves default features for
every entity and marks the rows degraded, or refuses (`on_store_unavailable="reject"`); after a
failure it skips the store for a short interval so requests do not each wait on it.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from feature_store.definitions import DatasetDefinition, Entity
from feature_store.online import (SEQUENCES_VIEW, DefaultsOnlyStore, OnlineStore, OnlineStoreUnavailableError,
                                  build_request_rows)
from serving import metrics
from serving.errors import BadRequestError, FeaturesUnavailableError, UnknownContextFeatureError

log = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class RowsQuery:
    """One user's candidates (and request context) to build rows for."""

    user_id: Any
    item_ids: list[Any]
    context: dict[str, Any] | None = None


@dataclass(frozen=True)
class RequestRows:
    """Raw rows for one user and its candidates. `cold_start`: the user's stored features were not
    used (unknown user, or the store unavailable); `degraded`: the store did not answer, so every
    feature is a default."""

    rows: pa.Table
    cold_start: bool
    degraded: bool = False


class StoreGuard:
    """Reads through the online store unless it failed less than `retry_interval_s` ago; then
    default features (`degrade`) or FeaturesUnavailableError (`reject`)."""

    def __init__(self, store: OnlineStore, policy: Literal["degrade", "reject"], retry_interval_s: float) -> None:
        self.store = store
        self._policy = policy
        self._retry_interval_s = retry_interval_s
        self._failed_at: float | None = None
        self._lock = threading.Lock()
        self._defaults = DefaultsOnlyStore()

    @property
    def available(self) -> bool:
        failed_at = self._failed_at
        return failed_at is None or time.monotonic() - failed_at >= self._retry_interval_s

    def run(self, read: Any) -> tuple[Any, bool]:
        """`read(store)` on the real store, or on the defaults-only store when it is unavailable;
        (result, degraded)."""
        if self.available:
            try:
                result = read(self.store)
            except OnlineStoreUnavailableError as err:
                with self._lock:
                    if self.available:  # log the outage once, not per request
                        log.warning("online store unavailable, serving %s for %.1f s: %s",
                                    "default features" if self._policy == "degrade" else "503s",
                                    self._retry_interval_s, err)
                    self._failed_at = time.monotonic()
            else:
                if self._failed_at is not None:
                    with self._lock:
                        if self._failed_at is not None:
                            log.info("online store answers again")
                            self._failed_at = None
                return result, False
        if self._policy == "reject":
            metrics.count_degraded("rejected")
            raise FeaturesUnavailableError("the online store is not answering; retry later")
        metrics.count_degraded("defaults")
        return read(self._defaults), True


def check_entity_id(entity: Entity, value: Any, what: str) -> Any:
    """`value` if it has the entity key's type; a client error naming the expected type otherwise."""
    if pa.types.is_integer(entity.dtype):
        if isinstance(value, bool) or not isinstance(value, int):
            raise BadRequestError(f"{what} must be an integer for this model's data, got {value!r}")
        if not -(2**63) <= value < 2**63:
            raise BadRequestError(f"{what} {value} is out of the 64-bit integer range")
        return value
    if not isinstance(value, str):
        raise BadRequestError(f"{what} must be a string for this model's data, got {value!r}")
    return value


def check_context(definition: DatasetDefinition, context: dict[str, Any] | None) -> dict[str, Any]:
    context = dict(context or {})
    known = {f.name for f in definition.context_features}
    unknown = sorted(set(context) - known)
    if unknown:
        raise UnknownContextFeatureError(
            f"unknown context features {unknown}; this model takes {sorted(known) or 'none'}")
    return context


def request_rows(guard: StoreGuard, definition: DatasetDefinition, query: RowsQuery) -> RequestRows:
    """One raw row per candidate for the query's user, read from the online store as of now."""
    user_id = check_entity_id(definition.user, query.user_id, "user_id")
    item_ids = [check_entity_id(definition.item, item, "item id") for item in query.item_ids]
    context = check_context(definition, query.context)
    try:
        (rows, missing), degraded = guard.run(
            lambda store: build_request_rows(store, definition, user_id, item_ids, context))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:  # a context value of the wrong type
        raise BadRequestError(f"request features do not match the model's schema: {err}") from None
    return RequestRows(rows, cold_start=bool(missing.user_views), degraded=degraded)


def user_history(guard: StoreGuard, definition: DatasetDefinition, user_id: Any) -> tuple[list[Any], bool]:
    """The user's latest item sequence (oldest first; [] for unknown users or datasets without one)
    and whether the store was unavailable."""
    user_id = check_entity_id(definition.user, user_id, "user_id")
    item_sequences = [s for s in definition.sequences if s.field == definition.item.join_key]
    if not item_sequences:
        return [], False
    stored, degraded = guard.run(lambda store: store.read(SEQUENCES_VIEW, [user_id]).rows[0])
    return [item for item in stored.get(item_sequences[0].name, []) if item is not None], degraded
