"""Offline store ingestion: schema validation with clear errors, atomic ingestions, buckets."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import feature_store_tiny_definition, feature_store_time

from feature_store.errors import FeatureStoreError, IngestionError, SchemaError
from feature_store.hashing import bucket_of
from feature_store.offline_store import OfflineStore


def users_table(**overrides):
    columns = {
        "user_id": pa.array([1, 2, 3], pa.int64()),
        "feature_timestamp": pa.array([feature_store_time(0)] * 3, pa.timestamp("us", tz="UTC")),
        "age": pa.array([20.0, 30.0, 40.0]),
        "country": pa.array(["fr", "de", "fr"]),
    }
    columns.update(overrides)
    return pa.table(columns)


@pytest.fixture
def store(tmp_path):
    return OfflineStore(tmp_path / "offline", num_buckets=4)


@pytest.fixture
def users_view():
    return feature_store_tiny_definition().view("users")


def test_ingest_then_read_back_every_row(store, users_view):
    result = store.ingest(users_view, users_table())
    assert result.rows == 3 and result.ingest_id == 1
    table = store.read_view("users")
    assert sorted(table.column("user_id").to_pylist()) == [1, 2, 3]
    assert table.schema == users_view.schema
    # Each row sits in the bucket its key hashes to.
    for bucket in range(4):
        keys = store.read_bucket("users", bucket).column("user_id")
        assert set(bucket_of(keys, 4).tolist()) <= {bucket}


def test_wrong_type_names_column_expected_and_found(store, users_view):
    with pytest.raises(SchemaError, match=r"column 'age': expected type double, found string"):
        store.ingest(users_view, users_table(age=pa.array(["20", "30", "40"])))


def test_missing_and_extra_columns_are_named(store, users_view):
    with pytest.raises(SchemaError, match=r"missing columns \['country'\] and unexpected columns \['zip'\]"):
        store.ingest(users_view, users_table().drop_columns(["country"]).append_column("zip", pa.array(["a"] * 3)))


def test_null_keys_and_missing_timestamps_are_rejected(store, users_view):
    with pytest.raises(IngestionError, match=r"column 'user_id': 1 null values \(first at row 1\)"):
        store.ingest(users_view, users_table(user_id=pa.array([1, None, 3], pa.int64())))
    ts = pa.array([feature_store_time(0), None, None], pa.timestamp("us", tz="UTC"))
    with pytest.raises(IngestionError, match=r"2 missing timestamps \(first at row 1\)"):
        store.ingest(users_view, users_table(feature_timestamp=ts))


def test_empty_input_is_rejected(store, users_view):
    with pytest.raises(IngestionError, match="no rows"):
        store.ingest(users_view, users_table().slice(0, 0))
    with pytest.raises(IngestionError, match="no rows"):
        store.ingest(users_view, iter([]))


def test_lossless_conversions_are_accepted(store, users_view):
    naive_seconds = pa.array([feature_store_time(0).replace(tzinfo=None)] * 3, pa.timestamp("s"))
    store.ingest(users_view, users_table(user_id=pa.array([1, 2, 3], pa.int32()), feature_timestamp=naive_seconds,
                                         age=pa.array([20, 30, 40], pa.int16())))
    table = store.read_view("users")
    assert table.schema == users_view.schema
    assert table.column("feature_timestamp")[0].as_py() == feature_store_time(0)


def test_failed_ingestion_leaves_nothing_behind(store, users_view, tmp_path):
    store.ingest(users_view, users_table())
    bad_chunk = users_table(age=pa.array(["x", "y", "z"]))
    with pytest.raises(SchemaError):
        store.ingest(users_view, iter([users_table(), bad_chunk]))  # the first chunk was already written
    assert store.read_view("users").num_rows == 3
    view_dir = tmp_path / "offline" / "users"
    assert sorted(p.name for p in view_dir.iterdir()) == ["_view.json", "ingest=000001"]


def test_a_view_keeps_its_schema(store, users_view):
    store.ingest(users_view, users_table())
    other = feature_store_tiny_definition().view("items")
    renamed = type(other)("users", other.entity, other.features)
    with pytest.raises(SchemaError, match="already holds data with schema"):
        store.ingest(renamed, pa.table({"x": [1]}))


def test_bucket_count_is_fixed_at_creation(tmp_path):
    OfflineStore(tmp_path / "s", num_buckets=4)
    assert OfflineStore(tmp_path / "s").num_buckets == 4
    with pytest.raises(FeatureStoreError, match="has 4 buckets"):
        OfflineStore(tmp_path / "s", num_buckets=8)


def test_reading_a_view_without_data_says_so(store):
    with pytest.raises(FeatureStoreError, match="no data for view 'events'"):
        store.read_bucket("events", 0)
