"""Materialization: the offline store's latest state into an online store.

Per feature view, each entity's most recent row (with its timestamp, so serving can apply the
view's TTL exactly as the training set does). Per user, the last N values of every sequence over
all events, computed by the same code as the training set's sequences (feature_store/history.py),
the seen set: every item the user interacted with, and the user's latest events with their times
(feature_store/online/seen.py).

`as_of` materializes the state at a past moment instead of the latest (feature rows at or before
it, events strictly before it, as the training set's point-in-time rows see them): offline
evaluation replays the endpoint against the store as it was when the test period began.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from feature_store.definitions import DatasetDefinition
from feature_store.history import latest_feature_rows, latest_history, order_events, timestamps_us
from feature_store.offline_store import OfflineStore
from feature_store.online.base import OnlineStore
from feature_store.online.seen import RECENT_VIEW, SEEN_VIEW, recent_events, seen_sets
from feature_store.progress import with_progress

# View name under which each user's behavior sequences are stored.
SEQUENCES_VIEW = "behavior_sequences"
# Key of a feature record that holds the row's timestamp (µs since the epoch).
TIMESTAMP_KEY = "_timestamp_us"
_WRITE_BATCH = 5_000


@dataclass
class MaterializeStats:
    entities: dict[str, int] = field(default_factory=dict)  # view -> entities written


def _write_in_batches(online: OnlineStore, view: str, keys: list, records: list[dict]) -> None:
    for start in range(0, len(keys), _WRITE_BATCH):
        online.write(view, dict(zip(keys[start:start + _WRITE_BATCH], records[start:start + _WRITE_BATCH],
                                    strict=True)))


def _before(table: pa.Table, timestamp_field: str, as_of: dt.datetime | None, inclusive: bool) -> pa.Table:
    if as_of is None or table.num_rows == 0:
        return table
    moment = pa.scalar(as_of, type=table.schema.field(timestamp_field).type)
    compare = pc.less_equal if inclusive else pc.less
    return table.filter(compare(table.column(timestamp_field), moment))


def materialize(offline: OfflineStore, definition: DatasetDefinition, online: OnlineStore,
                progress: bool = False, as_of: dt.datetime | None = None) -> MaterializeStats:
    """Writes the latest features of every view, and the latest sequences and the seen set of every
    user (as of `as_of` when given: see the module's docstring)."""
    stats = MaterializeStats()
    buckets = range(offline.num_buckets)
    for view in definition.feature_views:
        stats.entities[view.name] = 0
        if not offline.has_data(view.name):
            continue
        for bucket in with_progress(buckets, f"materialize {view.name}", "bucket", enabled=progress):
            rows = _before(offline.read_bucket(view.name, bucket), view.timestamp_field, as_of, inclusive=True)
            latest = latest_feature_rows(rows, view.key_field, view.timestamp_field)
            if latest.num_rows == 0:
                continue
            records = latest.select([f.name for f in view.features]).to_pylist()
            for record, ts in zip(records, timestamps_us(latest.column(view.timestamp_field)), strict=True):
                record[TIMESTAMP_KEY] = int(ts)
            _write_in_batches(online, view.name, latest.column(view.key_field).to_pylist(), records)
            stats.entities[view.name] += latest.num_rows
    user_key, item_key = definition.user.join_key, definition.item.join_key
    stats.entities[SEEN_VIEW] = 0
    stats.entities[RECENT_VIEW] = 0
    if definition.sequences:
        stats.entities[SEQUENCES_VIEW] = 0
    # A user's events all live in one bucket (the offline store buckets events by user).
    event_buckets = buckets if offline.has_data(definition.events_name) else range(0)
    for bucket in with_progress(event_buckets, "materialize sequences and seen items", "bucket",
                                enabled=progress):
        events = _before(offline.read_bucket(definition.events_name, bucket), definition.timestamp_field, as_of,
                         inclusive=False)
        if events.num_rows == 0:
            continue
        keys, records = seen_sets(events.column(user_key), events.column(item_key))
        _write_in_batches(online, SEEN_VIEW, keys, records)
        stats.entities[SEEN_VIEW] += len(records)
        ordered = order_events(events, user_key, item_key, definition.timestamp_field)
        keys, records = recent_events(ordered.table.column(user_key).to_pylist(),
                                      ordered.table.column(item_key).to_pylist(), ordered.timestamps,
                                      ordered.user_start)
        _write_in_batches(online, RECENT_VIEW, keys, records)
        stats.entities[RECENT_VIEW] += len(records)
        if not definition.sequences:
            continue
        columns: dict[str, pa.Array] = {}
        user_keys = None
        for seq in definition.sequences:
            user_keys, columns[seq.name] = latest_history(ordered, user_key, seq.field, seq.length)
        records = pa.table(columns).to_pylist()
        _write_in_batches(online, SEQUENCES_VIEW, user_keys.to_pylist(), records)
        stats.entities[SEQUENCES_VIEW] += len(records)
    return stats
