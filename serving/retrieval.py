"""Candidates for requests without candidates: the first stage of /v1/recommend.

The endpoint reads the user here (feature row, seen set, latest events with their times, from the
online store) and asks the version's recommendation stage (recommend/stage.py, built by `grec
build-index`) for candidates: co-visitation of the user's latest items, the next-item transformer
and recent popularity, each scoring the whole catalogue minus the user's seen set, merged, every
candidate with every source's term. A version without a stage (or a config that asks for it) takes
the items seen most often in training instead.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from feature_store.definitions import DatasetDefinition
from feature_store.online import OnlineStore, SeenItems, build_request_rows, read_recent, read_seen
from recommend.stage import RecommendationStage, UserHistory
from serving.errors import BadRequestError
from serving.features import StoreGuard, check_context, check_entity_id

CandidateSource = Literal["retrieval", "popularity"]


@dataclass(frozen=True)
class Candidates:
    """Candidate item ids, the source that chose them and, from a stage, each source's term per
    candidate (name -> one value per candidate)."""

    items: list[Any]
    source: CandidateSource
    terms: dict[str, list[float]] | None = None


@dataclass(frozen=True)
class UserState:
    """What retrieval needs about the request's user: one raw row (the training set's schema, no
    candidate item), the seen set, the latest events (items oldest first, times in seconds), and
    whether stored features were used."""

    rows: pa.Table
    seen: SeenItems
    cold_start: bool
    degraded: bool
    recent_items: tuple[Any, ...] = ()
    recent_times: tuple[float, ...] = ()

    def history(self, exclude_seen: bool, now: float | None = None) -> UserHistory:
        return UserHistory(self.recent_items, self.recent_times, self.seen if exclude_seen else SeenItems(),
                           time.time() if now is None else now)


def user_state(store: OnlineStore, definition: DatasetDefinition, user_id: Any, context: dict[str, Any] | None,
               now: dt.datetime | None = None) -> UserState:
    """The user's row (item columns null), seen set and latest events in `store` as of `now`
    (default: the current time)."""
    rows, missing = build_request_rows(store, definition, user_id, [None], context, now=now)
    items, times = read_recent(store, user_id)
    return UserState(rows, read_seen(store, user_id), cold_start=bool(missing.user_views), degraded=False,
                     recent_items=tuple(items), recent_times=tuple(times))


def read_user_state(guard: StoreGuard, definition: DatasetDefinition, user_id: Any,
                    context: dict[str, Any] | None) -> UserState:
    """`user_state` of a request's user, read through the guard (checked ids and context; default
    features, no history and an empty seen set while the store is unavailable)."""
    user_id = check_entity_id(definition.user, user_id, "user_id")
    context = check_context(definition, context)
    try:
        state, degraded = guard.run(lambda store: user_state(store, definition, user_id, context))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:  # a context value of the wrong type
        raise BadRequestError(f"request features do not match the model's schema: {err}") from None
    if degraded:
        return UserState(state.rows, state.seen, cold_start=True, degraded=True)
    return state


def read_seen_items(guard: StoreGuard, definition: DatasetDefinition, user_id: Any) -> tuple[SeenItems, bool]:
    """The user's seen set and whether the store was unavailable (then it is empty)."""
    user_id = check_entity_id(definition.user, user_id, "user_id")
    return guard.run(lambda store: read_seen(store, user_id))


def popular_items(vocabulary_values: list[Any], n: int, seen: SeenItems | None = None) -> list[Any]:
    """The `n` items seen most often in training (the item vocabulary's order), minus `seen`."""
    seen = seen or SeenItems()
    out: list[Any] = []
    for item in vocabulary_values:
        if item not in seen:
            out.append(item)
            if len(out) == n:
                break
    return out


def given_candidates(stage: RecommendationStage | None, state: UserState, items: list[Any],
                     exclude_seen: bool) -> Candidates:
    """A request's own candidates (minus the seen set unless repeats are allowed), with the stage's
    terms when the version has a stage."""
    if exclude_seen:
        items = state.seen.without(items)
    terms = None if stage is None else stage.terms_for(state.history(exclude_seen), items)
    return Candidates(items, "request", terms)


def stage_candidates(stage: RecommendationStage, state: UserState, exclude_seen: bool,
                     per_source: int | None = None) -> Candidates:
    """The stage's candidates for one user, with every source's term."""
    found = stage.candidates([state.history(exclude_seen)], per_source)
    positions = [p for p in range(found.rows.shape[1]) if found.valid[0, p]]
    return Candidates(stage.items(found.rows[0, positions]), "retrieval",
                      {name: [float(values[0, p]) for p in positions] for name, values in found.terms.items()})
