"""Materialization: the offline store's latest state into an online store.

Per feature view, each entity's most recent row (with its timestamp, so serving can apply the
view's TTL exactly as the training set does). Per user, the last N values of every sequence over
all events, computed by the same code as the training set's sequences (feature_store/history.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from tqdm.auto import tqdm

from feature_store.definitions import DatasetDefinition
from feature_store.history import latest_feature_rows, latest_history, order_events, timestamps_us
from feature_store.offline_store import OfflineStore
from feature_store.online.base import OnlineStore

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


def materialize(offline: OfflineStore, definition: DatasetDefinition, online: OnlineStore,
                progress: bool = False) -> MaterializeStats:
    """Writes the latest features of every view and the latest sequences of every user."""
    stats = MaterializeStats()
    buckets = range(offline.num_buckets)
    for view in definition.feature_views:
        stats.entities[view.name] = 0
        if not offline.has_data(view.name):
            continue
        for bucket in tqdm(buckets, desc=f"materialize {view.name}", unit="bucket", disable=not progress):
            latest = latest_feature_rows(offline.read_bucket(view.name, bucket), view.key_field, view.timestamp_field)
            if latest.num_rows == 0:
                continue
            records = latest.select([f.name for f in view.features]).to_pylist()
            for record, ts in zip(records, timestamps_us(latest.column(view.timestamp_field)), strict=True):
                record[TIMESTAMP_KEY] = int(ts)
            _write_in_batches(online, view.name, latest.column(view.key_field).to_pylist(), records)
            stats.entities[view.name] += latest.num_rows
    if definition.sequences:
        stats.entities[SEQUENCES_VIEW] = 0
        user_key = definition.user.join_key
        for bucket in tqdm(buckets, desc="materialize sequences", unit="bucket", disable=not progress):
            events = offline.read_bucket(definition.events_name, bucket)
            if events.num_rows == 0:
                continue
            ordered = order_events(events, user_key, definition.item.join_key, definition.timestamp_field)
            columns: dict[str, pa.Array] = {}
            keys = None
            for seq in definition.sequences:
                keys, columns[seq.name] = latest_history(ordered, user_key, seq.field, seq.length)
            records = pa.table(columns).to_pylist()
            _write_in_batches(online, SEQUENCES_VIEW, keys.to_pylist(), records)
            stats.entities[SEQUENCES_VIEW] += len(records)
    return stats
