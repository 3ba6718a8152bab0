"""Bad input to the feature store: labels out of their task's range, source files that do not match
their declared columns, and a prepare that fails late. Every error names what is wrong, and nothing
half-written is left."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import feature_store_tiny_definition, feature_store_time

from feature_store.errors import IngestionError, SourceFileError
from feature_store.offline_store import OfflineStore
from feature_store.options import SourceOptions, SyntheticOptions
from feature_store.prepare import prepare_dataset
from feature_store.sources.files import read_csv, read_parquet


def _events(**labels) -> pa.Table:
    columns = {
        "user_id": pa.array([1, 2, 3], pa.int64()),
        "item_id": pa.array(["a", "b", "c"]),
        "event_timestamp": pa.array([feature_store_time(d) for d in range(3)], pa.timestamp("us", tz="UTC")),
        "device": pa.array(["ios"] * 3),
        "label_click": pa.array([1, 0, 1], pa.int64()),
        "label_rating": pa.array([4.0, 2.0, 5.0]),
        "label_tier": pa.array([0, 2, 1], pa.int64()),
    }
    columns.update(labels)
    return pa.table(columns)


@pytest.mark.parametrize(("labels", "expected"), [
    ({"label_click": pa.array([1, 7, 1], pa.int64())},
     "column 'label_click' (binary task 'click'): expected 0 or 1, found 7 (first at row 1, 1 rows in all)"),
    ({"label_click": pa.array([-1, 0, -1], pa.int64())},
     "column 'label_click' (binary task 'click'): expected 0 or 1, found -1 (first at row 0, 2 rows in all)"),
    ({"label_tier": pa.array([0, 5, 1], pa.int64())},
     "column 'label_tier' (multiclass task 'tier'): expected a class id in [0, 3), found 5"),
    ({"label_tier": pa.array([0, 1, -1], pa.int64())},
     "column 'label_tier' (multiclass task 'tier'): expected a class id in [0, 3), found -1 (first at row 2"),
    ({"label_rating": pa.array([4.0, float("nan"), 5.0])},
     "column 'label_rating' (regression task 'rating'): expected a finite number, found nan"),
    ({"label_rating": pa.array([float("inf"), 2.0, 5.0])},
     "column 'label_rating' (regression task 'rating'): expected a finite number, found inf"),
])
def test_labels_outside_their_tasks_range_are_rejected(tmp_path, labels, expected):
    store = OfflineStore(tmp_path / "offline", num_buckets=2)
    with pytest.raises(IngestionError) as err:
        store.ingest(feature_store_tiny_definition().view("events"), _events(**labels))
    assert f"view 'events', {expected}" in str(err.value)
    assert not store.has_data("events")


def test_labels_in_range_are_accepted(tmp_path):
    store = OfflineStore(tmp_path / "offline", num_buckets=2)
    assert store.ingest(feature_store_tiny_definition().view("events"), _events()).rows == 3


SCHEMA = pa.schema([pa.field("user", pa.int64(), nullable=False), ("score", pa.float64()), ("name", pa.string())])


def test_a_csv_with_a_header_is_read_by_name_and_a_missing_column_is_named(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("extra,name,user,score\nx, ann ,1,0.5\ny,bob,2,\n")
    table = read_csv(path, SCHEMA, header=True, trim_strings=True)
    assert table.to_pylist() == [{"user": 1, "score": 0.5, "name": "ann"}, {"user": 2, "score": None, "name": "bob"}]
    path.write_text("name,user\nann,1\n")
    with pytest.raises(SourceFileError, match=rf"file {path}: no column 'score'; expected columns "
                                              r"\['user', 'score', 'name'\], found \['name', 'user'\]"):
        read_csv(path, SCHEMA, header=True)
    path.write_text("extra,name,user,score\nx,ann,one,0.5\n")
    with pytest.raises(SourceFileError, match=rf"file {path}, column 'user': expected int64, found 'one'"):
        read_csv(path, SCHEMA, header=True)


def test_a_parquet_file_with_another_type_or_no_value_is_named(tmp_path):
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"user": ["1"], "score": [0.5], "name": ["ann"]}), path)
    with pytest.raises(SourceFileError, match=rf"file {path}, column 'user': expected int64, found string"):
        read_parquet(path, SCHEMA)
    pq.write_table(pa.table({"user": pa.array([1, None], pa.int64()), "score": [0.5, 1.0], "name": ["a", "b"]}), path)
    with pytest.raises(SourceFileError, match="column 'user': expected a int64 value in every row, found an empty "
                                              r"value in row 2 \(1 rows in all\)"):
        read_parquet(path, SCHEMA)
    # Widening that keeps every value is allowed: int32 scores read as float64.
    pq.write_table(pa.table({"user": [1], "score": pa.array([2], pa.int32()), "name": ["a"]}), path)
    assert read_parquet(path, SCHEMA).column("score").to_pylist() == [2.0]


def _snapshot(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_prepare_that_fails_late_keeps_the_old_dataset_byte_for_byte(tmp_path, monkeypatch):
    options = SourceOptions(synthetic=SyntheticOptions(num_events=400, num_items=40))
    out = tmp_path / "data"
    prepare_dataset("synthetic", out, options=options)
    before = _snapshot(out)

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")  # after ingestion and the training set: the last step

    monkeypatch.setattr("feature_store.prepare.TransformSet.fit", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_dataset("synthetic", out, options=SourceOptions(seed=1, synthetic=options.synthetic), overwrite=True)
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no staging folder left beside it
