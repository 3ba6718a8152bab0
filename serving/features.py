"""Feature lookup: the online store's latest values composed into raw rows of the training schema.

The rows come from `feature_store.online.build_request_rows`, the same schema the training set
has, so the ranker applies the model's own TransformSet to them exactly as training did. Ids
arrive as JSON values; they are checked against the entity key type here so that a wrong type is
a client error with a message, not an Arrow failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from feature_store.definitions import DatasetDefinition, Entity
from feature_store.online import SEQUENCES_VIEW, OnlineStore, build_request_rows, open_online_store
from serving.errors import BadRequestError, UnknownContextFeatureError


@dataclass(frozen=True)
class RequestRows:
    """Raw rows for one user and its candidates, and whether the user was unknown to the store."""

    rows: pa.Table
    cold_start: bool


def open_store(url_or_path: str | None) -> OnlineStore:
    """The configured online store; without one, an empty in-memory store (every user cold)."""
    return open_online_store(url_or_path if url_or_path is not None else ":memory:")


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


def request_rows(store: OnlineStore, definition: DatasetDefinition, user_id: Any, item_ids: list[Any],
                 context: dict[str, Any] | None = None) -> RequestRows:
    """One raw row per candidate for `user_id`, read from the online store as of now."""
    user_id = check_entity_id(definition.user, user_id, "user_id")
    item_ids = [check_entity_id(definition.item, item, "item id") for item in item_ids]
    context = check_context(definition, context)
    try:
        rows, missing = build_request_rows(store, definition, user_id, item_ids, context)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:  # a context value of the wrong type
        raise BadRequestError(f"request features do not match the model's schema: {err}") from None
    return RequestRows(rows, cold_start=bool(missing.user_views))


def user_history(store: OnlineStore, definition: DatasetDefinition, user_id: Any) -> list[Any]:
    """The user's latest item sequence (oldest first), [] for unknown users or datasets without one."""
    user_id = check_entity_id(definition.user, user_id, "user_id")
    item_sequences = [s for s in definition.sequences if s.field == definition.item.join_key]
    if not item_sequences:
        return []
    stored = store.read(SEQUENCES_VIEW, [user_id]).rows[0]
    return [item for item in stored.get(item_sequences[0].name, []) if item is not None]
