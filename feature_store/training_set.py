"""Point-in-time training sets, built one offline-store bucket at a time.

For every labeled event (user, item, t):
- each feature view contributes its row with the latest timestamp <= t for that key, if that row
  is at most `ttl` old (else nulls);
- each sequence holds the user's events strictly before t, ties in ingestion order (history.py);
- the row goes to train, validation or test by the split protocol (feature_store/options.py): by t
  against two time cut-offs (global_time), or by its place among its user's events (user_time,
  leave_one_out; users never span buckets, so each bucket splits its own users).

Events and user features of a bucket hold the same users, so memory follows the largest bucket,
not the history. Item views are read whole (items are few next to events).
The output (docs/CONTRACTS.md §3) is written aside and renamed into place when complete.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from feature_store.atomic import replace_dir, sibling
from feature_store.definitions import DatasetDefinition, FeatureView, TaskKind
from feature_store.errors import FeatureStoreError
from feature_store.history import OrderedEvents, dedupe_feature_rows, history_before, order_events, timestamps_us
from feature_store.offline_store import OfflineStore
from feature_store.options import SPLITS, SplitConfig
from feature_store.progress import with_progress

__all__ = ["SPLITS", "SplitConfig", "TimeSplit", "UserSplit", "build_training_set", "iter_training_set",
           "read_training_set", "split_dir", "splitter_for", "time_split_for"]

@dataclass(frozen=True)
class TimeSplit:
    """Events before `validation_start` train; from it until `test_start` validate; then test."""

    validation_start: dt.datetime
    test_start: dt.datetime

    def __post_init__(self) -> None:
        if self.test_start < self.validation_start:
            raise ValueError(f"test_start {self.test_start} is before validation_start {self.validation_start}")

    def assign(self, timestamps: np.ndarray) -> np.ndarray:
        """Split index (0 train, 1 validation, 2 test) of each timestamp (µs since the epoch)."""
        bounds = np.array([_to_us(self.validation_start), _to_us(self.test_start)], dtype=np.int64)
        return np.searchsorted(bounds, timestamps, side="right").astype(np.int8)

    def assign_events(self, ordered: OrderedEvents, bucket: int) -> np.ndarray:
        return self.assign(ordered.timestamps)

    def to_dict(self) -> dict[str, str]:
        return {"validation_start": self.validation_start.isoformat(), "test_start": self.test_start.isoformat()}

    def summary(self) -> dict[str, Any]:
        return {"split": {"protocol": "global_time"}, "time_split": self.to_dict()}


@dataclass(frozen=True)
class UserSplit:
    """Each user's events in time order (ties: ingestion order, or shuffled with `tie_seed`): the
    last ones test, the ones before validation, the rest train (`SplitConfig`). A user with one event
    only trains; with two, the second is test. Every user with history is evaluated."""

    config: SplitConfig

    def counts(self, events: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(test, validation) events of users with `events` events each."""
        if self.config.protocol == "leave_one_out":
            test = np.ones_like(events)
            validation = np.ones_like(events)
        else:
            test = np.maximum(1, np.floor(self.config.test_fraction * events + 0.5)).astype(np.int64)
            validation = np.maximum(1, np.floor(self.config.validation_fraction * events + 0.5)).astype(np.int64)
        test = np.minimum(test, events - 1)  # at least one training event: a user needs history
        validation = np.clip(np.minimum(validation, events - test - 1), 0, None)
        return test, validation

    def assign_events(self, ordered: OrderedEvents, bucket: int) -> np.ndarray:
        """Split index (0 train, 1 validation, 2 test) of each event of `ordered` (sorted by user,
        time, ingestion order; a user's events are the rows user_start .. the next user's start)."""
        n = len(ordered.timestamps)
        if n == 0:
            return np.zeros(0, dtype=np.int8)
        start = ordered.user_start
        order = np.arange(n)
        if self.config.tie_seed is not None:  # tied events of a user in a seeded random order
            noise = np.random.default_rng([self.config.tie_seed, bucket]).random(n)
            order = np.lexsort((noise, ordered.timestamps, start))
        # A user's rows stay one block in `order`, so a row's place in it is its index minus the start.
        position = np.arange(n) - start
        run_end = np.flatnonzero(np.r_[start[1:] != start[:-1], True])
        events = run_end[np.searchsorted(run_end, np.arange(n))] + 1 - start
        test, validation = self.counts(events)
        codes = np.zeros(n, dtype=np.int8)
        codes[position >= events - test] = 2
        codes[(position >= events - test - validation) & (position < events - test)] = 1
        out = np.empty(n, dtype=np.int8)
        out[order] = codes
        return out

    def summary(self) -> dict[str, Any]:
        return {"split": self.config.to_dict()}


Splitter = TimeSplit | UserSplit


def splitter_for(store: OfflineStore, definition: DatasetDefinition, config: SplitConfig) -> Splitter:
    """The split of `config`'s protocol (global_time reads the events' times for its cut-offs)."""
    return UserSplit(config) if config.per_user else time_split_for(store, definition, config)


def _to_us(moment: dt.datetime) -> int:
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _from_us(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=int(micros))


def time_split_for(store: OfflineStore, definition: DatasetDefinition, config: SplitConfig) -> TimeSplit:
    """Cut-offs at the time quantiles of the events (reads only the timestamp column)."""
    ts_field = definition.timestamp_field
    parts = [timestamps_us(batch.column(0)) for batch in store.scan(definition.events_name, columns=[ts_field])]
    timestamps = np.concatenate(parts)
    after_last = int(timestamps.max()) + 1
    def cut(fraction_after: float) -> int:
        if fraction_after <= 0.0:
            return after_last
        return int(np.quantile(timestamps, 1.0 - fraction_after, method="higher"))
    return TimeSplit(_from_us(cut(config.validation_fraction + config.test_fraction)),
                     _from_us(cut(config.test_fraction)))


class _FeatureTimeline:
    """One feature view's rows for a set of keys, queried "as of" event times."""

    def __init__(self, rows: pa.Table, view: FeatureView) -> None:
        self.view = view
        self.rows = dedupe_feature_rows(rows, view.key_field, view.timestamp_field)
        self.keys = pc.unique(self.rows.column(view.key_field))
        right_codes = pc.index_in(self.rows.column(view.key_field), value_set=self.keys).to_numpy()
        self.right = pd.DataFrame({
            "ts": timestamps_us(self.rows.column(view.timestamp_field)),
            "code": right_codes.astype(np.int64),
            "frow": np.arange(self.rows.num_rows, dtype=np.int64),
        }).sort_values("ts", kind="stable")

    def features_as_of(self, keys: pa.ChunkedArray, timestamps: np.ndarray) -> pa.Table:
        """The view's features for each (key, time): the latest row at or before the time within
        the TTL, or nulls."""
        names = [f.name for f in self.view.features]
        if self.rows.num_rows == 0:
            return pa.table({n: pa.nulls(len(keys), self.rows.schema.field(n).type) for n in names})
        left_codes = pc.fill_null(pc.index_in(keys, value_set=self.keys), -1).to_numpy()
        left = pd.DataFrame({"ts": timestamps, "code": left_codes.astype(np.int64),
                             "row": np.arange(len(keys), dtype=np.int64)}).sort_values("ts", kind="stable")
        ttl = None if self.view.ttl is None else int(self.view.ttl / dt.timedelta(microseconds=1))
        merged = pd.merge_asof(left, self.right, on="ts", by="code", direction="backward",
                               allow_exact_matches=True, tolerance=ttl)
        matched = np.full(len(keys), -1, dtype=np.int64)
        found = merged["frow"].notna().to_numpy()
        matched[merged["row"].to_numpy()[found]] = merged["frow"].to_numpy()[found].astype(np.int64)
        indices = pa.array(matched, mask=matched < 0)
        return self.rows.select(names).take(indices)


@dataclass
class _SplitStats:
    rows: int = 0
    users: int = 0
    items: set = field(default_factory=set)
    label_sums: dict[str, float] = field(default_factory=dict)
    label_squares: dict[str, float] = field(default_factory=dict)
    label_counts: dict[str, int] = field(default_factory=dict)  # labelled rows (a task may leave rows out)
    class_counts: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class TrainingSetStats:
    """What a build wrote: per split rows, distinct users and items, label statistics."""

    definition: DatasetDefinition
    split: Splitter
    events_read: int = 0
    duplicates_dropped: int = 0
    splits: dict[str, _SplitStats] = field(default_factory=lambda: {s: _SplitStats() for s in SPLITS})

    def add(self, split: str, rows: pa.Table) -> None:
        stats = self.splits[split]
        definition = self.definition
        stats.rows += rows.num_rows
        # Users never span buckets, so per-bucket distinct counts add up.
        stats.users += len(pc.unique(rows.column(definition.user.join_key)))
        stats.items.update(pc.unique(rows.column(definition.item.join_key)).to_pylist())
        for task in definition.tasks:
            labels = rows.column(task.label).drop_null().to_numpy()
            stats.label_counts[task.name] = stats.label_counts.get(task.name, 0) + len(labels)
            if task.kind is TaskKind.MULTICLASS:
                counts = np.bincount(labels.astype(np.int64), minlength=task.num_classes)
                stats.class_counts[task.name] = stats.class_counts.get(task.name, 0) + counts
            else:
                stats.label_sums[task.name] = stats.label_sums.get(task.name, 0.0) + float(labels.sum())
                stats.label_squares[task.name] = (stats.label_squares.get(task.name, 0.0)
                                                  + float(np.square(labels, dtype=np.float64).sum()))

    def to_dict(self) -> dict[str, Any]:
        splits = {}
        for name, stats in self.splits.items():
            tasks = {}
            for task in self.definition.tasks:
                entry: dict[str, Any] = {"kind": str(task.kind)}
                labelled = stats.label_counts.get(task.name, 0)
                if labelled < stats.rows:
                    entry["labelled_rows"] = labelled
                if labelled == 0:
                    pass
                elif task.kind is TaskKind.BINARY:
                    entry["positive_rate"] = stats.label_sums[task.name] / labelled
                elif task.kind is TaskKind.REGRESSION:
                    mean = stats.label_sums[task.name] / labelled
                    var = max(stats.label_squares[task.name] / labelled - mean * mean, 0.0)
                    entry.update(mean=mean, std=float(np.sqrt(var)))
                else:
                    counts = stats.class_counts[task.name]
                    entry["class_rates"] = (counts / counts.sum()).tolist()
                tasks[task.name] = entry
            splits[name] = {"rows": stats.rows, "users": stats.users, "items": len(stats.items), "tasks": tasks}
        return {"events_read": self.events_read, "duplicates_dropped": self.duplicates_dropped,
                **self.split.summary(), "splits": splits}


def build_training_set(store: OfflineStore, definition: DatasetDefinition, out_dir: str | Path,
                       split: Splitter, progress: bool = False) -> TrainingSetStats:
    """Writes `out_dir/split=<name>/part-<bucket>.parquet` (raw point-in-time rows + labels).

    An existing `out_dir` is replaced only once the new one is complete.
    """
    out_dir = Path(out_dir)
    if not store.has_data(definition.events_name):
        raise FeatureStoreError(f"the offline store has no events (view {definition.events_name!r}); "
                                "ingest events before building a training set")
    item_timelines = {
        view.name: _FeatureTimeline(_read_or_empty(store, view, None), view)
        for view in definition.views_of(definition.item)
    }
    stats = TrainingSetStats(definition, split)
    staging = sibling(out_dir, "staging")
    for name in SPLITS:
        (staging / f"split={name}").mkdir(parents=True)
    try:
        for bucket in with_progress(range(store.num_buckets), "training set", "bucket", enabled=progress):
            events = store.read_bucket(definition.events_name, bucket)
            if events.num_rows == 0:
                continue
            rows, ordered = _bucket_rows(store, definition, bucket, events, item_timelines)
            stats.events_read += events.num_rows
            stats.duplicates_dropped += ordered.duplicates_dropped
            split_codes = split.assign_events(ordered, bucket)
            for code, name in enumerate(SPLITS):
                part = rows.filter(pa.array(split_codes == code))
                if part.num_rows:
                    pq.write_table(part, staging / f"split={name}" / f"part-{bucket:05d}.parquet",
                                   compression="zstd")
                    stats.add(name, part)
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return stats


def _read_or_empty(store: OfflineStore, view: FeatureView, bucket: int | None) -> pa.Table:
    if not store.has_data(view.name):
        return view.schema.empty_table()
    return store.read_view(view.name) if bucket is None else store.read_bucket(view.name, bucket)


def _bucket_rows(store: OfflineStore, definition: DatasetDefinition, bucket: int, events: pa.Table,
                 item_timelines: dict[str, _FeatureTimeline]) -> tuple[pa.Table, OrderedEvents]:
    """The point-in-time rows of one bucket's events, sorted by (user, time, ingestion order), and
    the ordered events they come from (row for row)."""
    user_key, item_key = definition.user.join_key, definition.item.join_key
    ordered = order_events(events, user_key, item_key, definition.timestamp_field)
    table = ordered.table
    columns: dict[str, pa.ChunkedArray | pa.Array] = {name: table.column(name)
                                                      for name in definition.event_view.schema.names}
    for view in definition.feature_views:
        if view.entity == definition.item:
            timeline = item_timelines[view.name]
        else:
            timeline = _FeatureTimeline(_read_or_empty(store, view, bucket), view)
        features = timeline.features_as_of(table.column(view.key_field), ordered.timestamps)
        columns.update({name: features.column(name) for name in features.column_names})
    for seq in definition.sequences:
        columns[seq.name] = history_before(ordered, seq.field, seq.length)
    schema = definition.training_schema()
    return pa.Table.from_arrays([columns[name] for name in schema.names], schema=schema), ordered


def split_dir(training_dir: str | Path, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    return Path(training_dir) / f"split={split}"


def iter_training_set(training_dir: str | Path, split: str, columns: list[str] | None = None,
                      batch_size: int = 65_536) -> Iterator[pa.Table]:
    """Streams one split of a training set as tables of at most `batch_size` rows."""
    folder = split_dir(training_dir, split)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        return
    yield from iter_batches(ds.dataset(files, format="parquet"), columns, batch_size)


def iter_batches(dataset: ds.Dataset, columns: list[str] | None, batch_size: int) -> Iterator[pa.Table]:
    """`dataset`'s rows as tables of at most `batch_size` rows, the scanner reading one batch and one
    file ahead of the consumer: with Arrow's defaults (16 batches, 4 files) a consumer slower than the
    read held about 540 MB of decoded rows of a 2.4M-row synthetic split at once, with these about
    290 MB (measured), whatever the split's size."""
    for batch in dataset.to_batches(columns=columns, batch_size=batch_size, batch_readahead=1, fragment_readahead=1):
        if batch.num_rows:
            yield pa.Table.from_batches([batch])


def read_training_set(training_dir: str | Path, split: str, columns: list[str] | None = None) -> pa.Table:
    """One whole split in memory (small datasets, tests, evaluation)."""
    folder = split_dir(training_dir, split)
    files = sorted(folder.glob("*.parquet"))
    if not files:
        raise FeatureStoreError(f"{folder} holds no rows")
    return ds.dataset(files, format="parquet").to_table(columns=columns)
