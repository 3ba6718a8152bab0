"""Online stores (SQLite and a real Redis server), materialization, and request rows that match
training rows (no train/serve skew)."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest
from conftest import feature_store_tiny_definition, feature_store_time
from test_feature_store_training_set import events_table, items_table, users_table

from feature_store.offline_store import OfflineStore
from feature_store.online import (RECENT_VIEW, SEEN_VIEW, SEQUENCES_VIEW, OnlineStoreNotFoundError,
                                  OnlineStoreUnavailableError, RedisOnlineStore, SQLiteOnlineStore, build_request_rows,
                                  materialize, open_online_store, read_recent, read_seen)
from feature_store.training_set import TimeSplit, build_training_set, read_training_set
from feature_store.transforms import TransformSet


@pytest.fixture(params=["sqlite", "redis"])
def online(request, tmp_path):
    if request.param == "sqlite":
        store = open_online_store(tmp_path / "online.sqlite", create=True)
    else:
        store = RedisOnlineStore(request.getfixturevalue("redis_url"), prefix=f"test-{tmp_path.name}", create=True)
    yield store
    store.close()


def test_batch_read_returns_defaults_and_names_the_missing(online):
    online.write("users", {1: {"age": 20.0, "country": "fr"}, "2": {"age": 30.0, "country": None}})
    result = online.read("users", [1, 3, 2, 4], defaults={"age": None})
    assert result.rows == [{"age": 20.0, "country": "fr"}, {"age": None}, {"age": 30.0, "country": None},
                           {"age": None}]
    assert result.missing == [3, 4]
    online.write("users", {1: {"age": 21.0}})  # a write replaces the entity's values
    assert online.read("users", [1]).rows == [{"age": 21.0}]
    assert online.read("items", [1]).missing == [1]  # views are separate


def test_open_online_store_picks_the_backend(tmp_path, redis_url):
    assert isinstance(open_online_store(tmp_path / "a.db", create=True), SQLiteOnlineStore)
    assert isinstance(open_online_store(f"sqlite:///{tmp_path}/b.db", create=True), SQLiteOnlineStore)
    assert isinstance(open_online_store(f"sqlite:///{tmp_path}/b.db"), SQLiteOnlineStore)  # now it exists
    store = open_online_store(redis_url, create=True)
    assert isinstance(store, RedisOnlineStore)
    store.close()
    with pytest.raises(ValueError, match="unsupported online store"):
        open_online_store("postgres://somewhere/db")


def test_a_reader_never_gets_an_empty_store_made_on_the_spot(tmp_path, redis_url):
    missing = tmp_path / "typo.sqlite"
    with pytest.raises(OnlineStoreNotFoundError, match="does not exist.*grec data materialize"):
        open_online_store(missing)
    assert not missing.exists()
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("not a database " * 100)
    with pytest.raises(OnlineStoreNotFoundError, match="cannot open"):
        open_online_store(not_sqlite)
    import sqlite3

    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(OnlineStoreNotFoundError, match="not a grec online store"):
        open_online_store(other)
    # A Redis database nothing was materialized into (a wrong db number, say) is no store either.
    with pytest.raises(OnlineStoreNotFoundError, match="holds no grec online store"):
        open_online_store(redis_url.rsplit("/", 1)[0] + "/7")


def test_unreachable_redis_is_a_clear_error():
    with pytest.raises(OnlineStoreUnavailableError, match="cannot reach the Redis online store"):
        RedisOnlineStore("redis://127.0.0.1:1/0")


def test_redis_reads_fail_fast_when_the_server_stops_or_hangs_and_work_again_after(tmp_path):
    """Past the retries a read raises OnlineStoreUnavailableError (the caller degrades or refuses),
    for a stopped server and for one that accepts but never answers; the same store object reads
    again once the server is back."""
    from conftest import start_loopback_redis

    server = start_loopback_redis()
    try:
        store = open_online_store(server.url, create=True)
        store.write("users", {1: {"age": 30}})
        server.pause()
        with pytest.raises(OnlineStoreUnavailableError, match="did not answer"):
            store.read("users", [1])
        server.resume()
        assert store.read("users", [1]).rows == [{"age": 30}]
        server.stop()
        with pytest.raises(OnlineStoreUnavailableError):
            store.read("users", [1])
        server.start()
        store.write("users", {1: {"age": 31}})  # the restarted server kept nothing
        assert store.read("users", [1]).rows == [{"age": 31}]
        store.close()
    finally:
        server.stop()


@pytest.fixture
def prepared(tmp_path):
    """A tiny offline store plus its training set and transforms."""
    definition = feature_store_tiny_definition()
    offline = OfflineStore(tmp_path / "offline", num_buckets=2)
    events = [(1, "a", 1, 1), (1, "b", 2, 0), (1, "c", 3, 1), (1, "d", 4, 1), (2, "a", 2, 0)]
    offline.ingest(definition.view("events"), events_table(events))
    offline.ingest(definition.view("users"), users_table([(1, 0, 20, "fr"), (1, 3, 21, "de"), (2, 0, 40, "fr")]))
    offline.ingest(definition.view("items"), items_table(["a", "b", "c", "d"]))
    build_training_set(offline, definition, tmp_path / "ts", TimeSplit(feature_store_time(100), feature_store_time(100)))
    train = read_training_set(tmp_path / "ts", "train")
    return definition, offline, train, TransformSet.fit(definition, [train])


def test_materialize_writes_latest_features_and_sequences(online, prepared):
    definition, offline, _, _ = prepared
    stats = materialize(offline, definition, online)
    assert stats.entities == {"users": 2, "items": 4, SEQUENCES_VIEW: 2, SEEN_VIEW: 2, RECENT_VIEW: 2}
    user = online.read("users", [1]).rows[0]
    assert (user["age"], user["country"]) == (21.0, "de")
    assert online.read(SEQUENCES_VIEW, [1, 2]).rows == [{"hist_item_id": ["b", "c", "d"]}, {"hist_item_id": ["a"]}]
    # the seen set holds every item of the user's history, beyond the sequence's window too
    assert (read_seen(online, 1).items, read_seen(online, 2).items, read_seen(online, 3).items) == (
        ("a", "b", "c", "d"), ("a",), ())
    # the latest events in time order with their times (seconds), what the recommendation stage reads
    day = 86_400
    items, times = read_recent(online, 1)
    start = feature_store_time(0).timestamp()
    assert items == ["a", "b", "c", "d"] and [t - start for t in times] == [day, 2 * day, 3 * day, 4 * day]
    assert read_recent(online, 3) == ([], [])


def test_request_rows_equal_training_rows_at_the_same_moment(online, prepared, tmp_path):
    """A request for user 1 just after its last event must look like a training row at that time."""
    definition, offline, _, transforms = prepared
    materialize(offline, definition, online)
    now = feature_store_time(5)
    rows, missing = build_request_rows(online, definition, 1, ["e", "a"], context={"device": "ios"}, now=now)
    assert rows.schema == definition.training_schema(include_labels=False)
    assert missing.items == {"items": ["e"]} and missing.user_views == []
    # The same event, added to the offline store, gets this training row:
    offline.ingest(definition.view("events"), events_table([(1, "a", 5, 0)]))
    build_training_set(offline, definition, tmp_path / "ts2", TimeSplit(feature_store_time(100), feature_store_time(100)))
    train = read_training_set(tmp_path / "ts2", "train").to_pylist()
    expected = next(r for r in train if r["user_id"] == 1 and r["event_timestamp"] == now)
    served = rows.to_pylist()[1]
    assert served == {k: v for k, v in expected.items() if not k.startswith("label_")}
    served_t, trained_t = transforms.transform(rows.slice(1)), transforms.transform(pa.Table.from_pylist([expected]))
    assert served_t.equals(trained_t.select(served_t.column_names))


def test_request_rows_for_unknown_entities_use_defaults(online, prepared):
    definition, offline, _, transforms = prepared
    materialize(offline, definition, online)
    rows, missing = build_request_rows(online, definition, 99, ["a"], now=feature_store_time(5))
    assert missing.user_views == ["users", SEQUENCES_VIEW] and missing.any
    row = rows.to_pylist()[0]
    assert row["age"] is None and row["hist_item_id"] == [] and row["category"] == "c_a"
    encoded = transforms.transform(rows)
    assert encoded.column("age").to_pylist() == [0.0] and encoded.column("hist_item_id").to_pylist() == [[0, 0, 0]]


def test_request_rows_apply_the_view_ttl(online, prepared):
    definition, offline, _, _ = prepared
    materialize(offline, definition, online)
    late = feature_store_time(3) + dt.timedelta(days=10, seconds=1)  # the users view has a 10-day TTL
    rows, missing = build_request_rows(online, definition, 1, ["a"], now=late)
    assert missing.user_views == ["users"] and rows.column("age").to_pylist() == [None]


def test_unknown_context_is_rejected(online, prepared):
    definition, offline, _, _ = prepared
    with pytest.raises(ValueError, match=r"unknown context features \['page'\]"):
        build_request_rows(online, definition, 1, ["a"], context={"page": "home"})

