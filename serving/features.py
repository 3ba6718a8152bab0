"""Feature lookup: the online store's latest values composed into raw rows of the training schema.

The rows come from `feature_store.online.build_request_rows`, the same schema the training set
has, so the ranker applies the model's own TransformSet to them exactly as training did. Ids
arrive as JSON values; they are checked against the entity key type here so that a wrong type is
a client error with a message, not an Arrow failure.

When the store stops answering (past its own retries), `StoreGuard` serves default features for
every entity and marks the rows degraded, or refuses (`on_store_unavailable="reject"`); after a
failure it skips the store for a short interval so requests do not each wait on it.

The user side of the model (`grec encode-users`, stored by feature_store.online.representations,
decompressed by grec.user_tokens) comes with the rows when the store holds it fresh for this model
version: same version, and computed from exactly the user-side values the rows now hold (no new
event, no profile change, no request context). Otherwise the ranker computes it; which one, and
why, is in `RequestRows` and counted in `grec_user_encoding_total`.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from feature_store.definitions import DatasetDefinition, Entity
from feature_store.online import DefaultsOnlyStore, OnlineStore, OnlineStoreUnavailableError, build_request_rows
from feature_store.online.representations import RepresentationStore, StoredUser, inputs_digest
from grec.user_tokens import decompress_tokens, projection_from
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
    # The user's stored representation [num_user_tokens, d_model] when fresh, else None (the ranker
    # computes it); `user_encoding_reason` says why it was or was not used.
    user_tokens: np.ndarray | None = None
    user_encoding_reason: str = "not_looked_up"

    @property
    def user_encoding(self) -> Literal["stored", "online"]:
        return "stored" if self.user_tokens is not None else "online"


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


def request_rows(guard: StoreGuard, definition: DatasetDefinition, query: RowsQuery,
                 representations: RepresentationStore | None = None) -> RequestRows:
    """One raw row per candidate for the query's user, read from the online store as of now, with
    the user's stored representation when `representations` holds it fresh."""
    user_id = check_entity_id(definition.user, query.user_id, "user_id")
    item_ids = [check_entity_id(definition.item, item, "item id") for item in query.item_ids]
    context = check_context(definition, query.context)
    try:
        (rows, missing), degraded = guard.run(
            lambda store: build_request_rows(store, definition, user_id, item_ids, context))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:  # a context value of the wrong type
        raise BadRequestError(f"request features do not match the model's schema: {err}") from None
    found = RequestRows(rows, cold_start=bool(missing.user_views), degraded=degraded)
    if representations is not None and rows.num_rows:
        found = _with_stored_user(found, representations, definition, user_id, bool(context))
        metrics.count_user_encoding(found.user_encoding, found.user_encoding_reason)
    return found


def _with_stored_user(found: RequestRows, representations: RepresentationStore, definition: DatasetDefinition,
                      user_id: Any, has_context: bool) -> RequestRows:
    """`found` with the user's stored tokens when they are fresh for these rows, else with the reason."""
    if found.degraded:
        return replace(found, user_encoding_reason="store_unavailable")
    if has_context:  # the stored side was computed without request context
        return replace(found, user_encoding_reason="context")
    try:
        if representations.meta() is None:
            return replace(found, user_encoding_reason="version_not_encoded")
        stored = representations.read_user(user_id)
    except OnlineStoreUnavailableError:  # the rows were read; the ranker computes the user side
        return replace(found, user_encoding_reason="store_unavailable")
    if stored is None:
        return replace(found, user_encoding_reason="user_not_encoded")
    if stored.digest != inputs_digest(found.rows, definition):
        return replace(found, user_encoding_reason="stale")
    # The ranker reads no user-side column when it has the tokens: the behavior sequences, the
    # largest of them, are dropped here rather than transformed per row.
    rows = found.rows
    for seq in definition.sequences:
        index = rows.schema.get_field_index(seq.name)
        rows = rows.set_column(index, rows.schema.field(index), pa.nulls(rows.num_rows, rows.schema.field(index).type))
    return replace(found, rows=rows, user_tokens=stored_user_tokens(stored), user_encoding_reason="fresh")


def stored_user_tokens(stored: StoredUser) -> np.ndarray:
    """A stored user's tokens [num_user_tokens, d_model], decompressed with its run's projection."""
    return decompress_tokens(stored.values, stored.scales, projection_from(stored.projection))

