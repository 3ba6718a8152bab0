"""Raw request rows for serving, in exactly the training set's raw schema (minus labels).

Serving then applies the same TransformSet as training: the only difference between a served
row and a training row is that the served one reads the latest materialized values ("now").
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from feature_store.definitions import DatasetDefinition, FeatureView
from feature_store.online.base import OnlineStore
from feature_store.online.materialize import SEQUENCES_VIEW, TIMESTAMP_KEY


@dataclass(frozen=True)
class MissingFeatures:
    """What the online store did not have: user views (and the sequences view) without the user,
    and per item view the item ids it lacked. Missing values are nulls (empty sequences), which
    the transforms map to their defaults."""

    user_views: list[str] = field(default_factory=list)
    items: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def any(self) -> bool:
        return bool(self.user_views) or any(self.items.values())


def _fresh(record: dict[str, Any], view: FeatureView, now_us: int) -> bool:
    """Whether a stored row is within the view's TTL at `now` (the training set's rule)."""
    if view.ttl is None:
        return True
    return now_us - record[TIMESTAMP_KEY] <= view.ttl // dt.timedelta(microseconds=1)


def build_request_rows(store: OnlineStore, definition: DatasetDefinition, user_id: Any,
                       item_ids: Sequence[Any], context: Mapping[str, Any] | None = None,
                       now: dt.datetime | None = None) -> tuple[pa.Table, MissingFeatures]:
    """One raw row per candidate item for `user_id` as of `now` (default: the current time)."""
    context = dict(context or {})
    known_context = {f.name for f in definition.context_features}
    unknown = sorted(set(context) - known_context)
    if unknown:
        raise ValueError(f"unknown context features {unknown}; this dataset has {sorted(known_context)}")
    now = now or dt.datetime.now(dt.UTC)
    now_us = (now - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    n = len(item_ids)
    columns: dict[str, list[Any]] = {
        definition.user.join_key: [user_id] * n,
        definition.item.join_key: list(item_ids),
        definition.timestamp_field: [now] * n,
    }
    for feature in definition.context_features:
        columns[feature.name] = [context.get(feature.name)] * n
    missing = MissingFeatures()
    for view in definition.feature_views:
        names = [f.name for f in view.features]
        if view.entity == definition.user:
            record = store.read(view.name, [user_id]).rows[0]
            if not record or not _fresh(record, view, now_us):
                missing.user_views.append(view.name)
                record = {}
            for name in names:
                columns[name] = [record.get(name)] * n
        else:
            result = store.read(view.name, item_ids)
            records = [r if r and _fresh(r, view, now_us) else {} for r in result.rows]
            missing.items[view.name] = [i for i, r in zip(item_ids, records, strict=True) if not r]
            for name in names:
                columns[name] = [r.get(name) for r in records]
    if definition.sequences:
        sequences = store.read(SEQUENCES_VIEW, [user_id]).rows[0]
        if not sequences:
            missing.user_views.append(SEQUENCES_VIEW)
        for seq in definition.sequences:
            columns[seq.name] = [sequences.get(seq.name, [])] * n
    schema = definition.training_schema(include_labels=False)
    return pa.Table.from_pydict({name: columns[name] for name in schema.names}, schema=schema), missing
