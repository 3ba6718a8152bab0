"""The offline store: one partitioned Parquet dataset per view, read through pyarrow.dataset.

Layout under the store root:

    _store.json                                   number of buckets (fixed when the store is made)
    <view>/_view.json                             the view's schema, key and timestamp columns
    <view>/ingest=000001/bucket=00003/part.parquet

Rows go to bucket `stable_hash(key) % num_buckets`, with the key of the view's entity (events use
the user key). A user's events and user features therefore share a bucket, so training sets are
built one bucket at a time with bounded memory.

Each ingestion writes into a hidden staging folder (names starting with "." are ignored by
readers) and becomes visible by one atomic rename to `ingest=<n>`: a failed ingestion, validation
error or crash included, leaves nothing readers can see. Ingestions are numbered in order; when
two rows share a key and timestamp, readers keep the one ingested last.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from feature_store.atomic import write_json_atomically
from feature_store.definitions import dtype_from_str
from feature_store.errors import FeatureStoreError, IngestionError, SchemaError
from feature_store.hashing import bucket_of
from feature_store.progress import with_progress
from feature_store.validation import conform_table

STORE_FORMAT_VERSION = 1
DEFAULT_NUM_BUCKETS = 8
_PARTITIONING = ds.partitioning(pa.schema([("ingest", pa.int32()), ("bucket", pa.int32())]), flavor="hive")


class StoredView(Protocol):
    """What the store needs of a view (FeatureView and EventView both provide it)."""

    name: str
    timestamp_field: str

    @property
    def key_field(self) -> str: ...

    @property
    def schema(self) -> pa.Schema: ...


@dataclass(frozen=True)
class IngestResult:
    view: str
    ingest_id: int
    rows: int
    files: int


class OfflineStore:
    """Partitioned Parquet per view. `num_buckets` is fixed when the store is created."""

    def __init__(self, root: str | Path, num_buckets: int | None = None) -> None:
        self.root = Path(root)
        meta_path = self.root / "_store.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("version") != STORE_FORMAT_VERSION:
                raise FeatureStoreError(f"offline store {self.root}: format version {meta.get('version')!r} "
                                        f"is not supported (expected {STORE_FORMAT_VERSION})")
            if num_buckets is not None and num_buckets != meta["num_buckets"]:
                raise FeatureStoreError(f"offline store {self.root} has {meta['num_buckets']} buckets; "
                                        f"cannot open it with {num_buckets}")
            self.num_buckets = int(meta["num_buckets"])
        else:
            self.num_buckets = DEFAULT_NUM_BUCKETS if num_buckets is None else num_buckets
            if self.num_buckets < 1:
                raise FeatureStoreError(f"num_buckets must be >= 1, got {self.num_buckets}")
            self.root.mkdir(parents=True, exist_ok=True)
            write_json_atomically(meta_path, {"version": STORE_FORMAT_VERSION, "num_buckets": self.num_buckets})

    # --- writing ---
    def ingest(self, view: StoredView, data: pa.Table | Iterable[pa.Table], progress: bool = False) -> IngestResult:
        """Validates and writes `data` (one table or an iterable of chunks) as one ingestion.

        Every chunk is checked against `view.schema` before it is written; on any error the
        staging folder is removed and the view is unchanged.
        """
        view_dir = self.root / view.name
        self._register(view)
        staging = view_dir / f".staging-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        writers: dict[int, pq.ParquetWriter] = {}
        rows = 0
        chunks = [data] if isinstance(data, pa.Table) else data
        try:
            for chunk in with_progress(chunks, f"ingest {view.name}", "chunk", enabled=progress):
                table = conform_table(chunk, view)
                self._write_buckets(table, view, staging, writers)
                rows += table.num_rows
            for writer in writers.values():
                writer.close()
            if rows == 0:
                raise IngestionError(f"view {view.name!r}: the input has no rows")
            ingest_id = self._commit(staging, view_dir)
        except BaseException:
            for writer in writers.values():
                writer.close()
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return IngestResult(view.name, ingest_id, rows, len(writers))

    def _register(self, view: StoredView) -> None:
        meta = {"name": view.name, "key_field": view.key_field, "timestamp_field": view.timestamp_field,
                "schema": [[f.name, str(f.type), f.nullable] for f in view.schema]}
        path = self.root / view.name / "_view.json"
        if path.exists():
            stored = json.loads(path.read_text())
            if stored != meta:
                raise SchemaError(f"view {view.name!r} already holds data with schema {stored['schema']} "
                                  f"(key {stored['key_field']!r}); the new definition has {meta['schema']} "
                                  f"(key {meta['key_field']!r}). Use a new store or view name.")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomically(path, meta)

    def _write_buckets(self, table: pa.Table, view: StoredView, staging: Path,
                       writers: dict[int, pq.ParquetWriter]) -> None:
        buckets = bucket_of(table.column(view.key_field), self.num_buckets)
        order = np.argsort(buckets, kind="stable")
        sorted_buckets = buckets[order]
        starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
        ends = np.r_[starts[1:], len(order)]
        for start, end in zip(starts, ends, strict=True):
            bucket = int(sorted_buckets[start])
            if bucket not in writers:
                folder = staging / f"bucket={bucket:05d}"
                folder.mkdir()
                writers[bucket] = pq.ParquetWriter(folder / "part.parquet", view.schema, compression="zstd")
            writers[bucket].write_table(table.take(order[start:end]))

    def _commit(self, staging: Path, view_dir: Path) -> int:
        # A directory rename onto an existing name fails, so concurrent writers cannot share an id.
        while True:
            ingest_id = max(self._ingest_ids(view_dir), default=0) + 1
            try:
                staging.rename(view_dir / f"ingest={ingest_id:06d}")
                return ingest_id
            except OSError:
                if not (view_dir / f"ingest={ingest_id:06d}").exists():
                    raise

    @staticmethod
    def _ingest_ids(view_dir: Path) -> list[int]:
        return [int(p.name.split("=", 1)[1]) for p in view_dir.glob("ingest=*")]

    # --- reading ---
    def views(self) -> list[str]:
        return sorted(p.parent.name for p in self.root.glob("*/_view.json"))

    def has_data(self, view_name: str) -> bool:
        return bool(self._ingest_ids(self.root / view_name))

    def dataset(self, view_name: str) -> ds.Dataset:
        view_dir = self.root / view_name
        if not self.has_data(view_name):
            raise FeatureStoreError(f"offline store {self.root} has no data for view {view_name!r}; "
                                    f"views with data: {[v for v in self.views() if self.has_data(v)]}")
        schema = _schema_from_meta(json.loads((view_dir / "_view.json").read_text()))
        return ds.dataset(view_dir, format="parquet", partitioning=_PARTITIONING, schema=schema)

    def read_bucket(self, view_name: str, bucket: int, columns: list[str] | None = None) -> pa.Table:
        """All rows of one bucket, in ingestion order (earlier ingestions first)."""
        dataset = self.dataset(view_name)
        fragments = sorted(dataset.get_fragments(filter=ds.field("bucket") == bucket), key=lambda f: f.path)
        names = columns or dataset.schema.names[:-2]  # without the partition columns
        if not fragments:
            return dataset.schema.empty_table().select(names)
        return pa.concat_tables([f.to_table(columns=names, schema=dataset.schema) for f in fragments])

    def read_view(self, view_name: str, columns: list[str] | None = None) -> pa.Table:
        """A whole view in ingestion order. Meant for small views (items); stream big ones."""
        return pa.concat_tables([self.read_bucket(view_name, b, columns) for b in range(self.num_buckets)])

    def scan(self, view_name: str, columns: list[str] | None = None,
             batch_size: int = 131_072) -> Iterator[pa.RecordBatch]:
        """Streams a view in record batches without loading it whole."""
        dataset = self.dataset(view_name)
        yield from dataset.to_batches(columns=columns or dataset.schema.names[:-2], batch_size=batch_size)


def _schema_from_meta(meta: dict) -> pa.Schema:
    # The view schema as stored, plus the two partition columns.
    fields = [pa.field(name, dtype_from_str(type_text), nullable) for name, type_text, nullable in meta["schema"]]
    return pa.schema(fields + list(_PARTITIONING.schema))
