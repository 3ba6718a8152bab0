"""Point-in-time training sets: features as of each event, sequences strictly before it, no
future leaks, ties in ingestion order, duplicates, input order, time split, bucket independence."""

from __future__ import annotations

import random

import pyarrow as pa
import pytest
from conftest import feature_store_tiny_definition, feature_store_time

from feature_store.errors import FeatureStoreError
from feature_store.offline_store import OfflineStore
from feature_store.training_set import SPLITS, SplitConfig, TimeSplit, UserSplit, build_training_set, \
    read_training_set, time_split_for

TS = pa.timestamp("us", tz="UTC")
FAR_FUTURE = TimeSplit(feature_store_time(1000), feature_store_time(1000))  # everything in train


def events_table(rows):
    """rows: (user, item, day, click) tuples."""
    return pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.int64()),
        "item_id": pa.array([r[1] for r in rows], pa.string()),
        "event_timestamp": pa.array([feature_store_time(r[2]) for r in rows], TS),
        "device": pa.array(["ios"] * len(rows)),
        "label_click": pa.array([r[3] for r in rows], pa.int64()),
        "label_rating": pa.array([float(r[3]) for r in rows]),
        "label_tier": pa.array([0] * len(rows), pa.int64()),
    })


def users_table(rows):
    """rows: (user, day, age, country)."""
    return pa.table({"user_id": pa.array([r[0] for r in rows], pa.int64()),
                     "feature_timestamp": pa.array([feature_store_time(r[1]) for r in rows], TS),
                     "age": pa.array([float(r[2]) for r in rows]), "country": pa.array([r[3] for r in rows])})


def items_table(items):
    return pa.table({"item_id": pa.array(items), "feature_timestamp": pa.array([feature_store_time(-1)] * len(items), TS),
                     "category": pa.array([f"c_{i}" for i in items]), "tags": pa.array([[i] for i in items]),
                     "title": pa.array([f"title {i}" for i in items])})


def build(tmp_path, events, users, items=("a", "b", "c", "d"), num_buckets=2, definition=None, split=FAR_FUTURE):
    definition = definition or feature_store_tiny_definition()
    store = OfflineStore(tmp_path / "offline", num_buckets=num_buckets)
    for chunk in events if isinstance(events, list) and isinstance(events[0], pa.Table) else [events_table(events)]:
        store.ingest(definition.view("events"), chunk)
    store.ingest(definition.view("users"), users_table(users))
    store.ingest(definition.view("items"), items_table(list(items)))
    stats = build_training_set(store, definition, tmp_path / "training_set", split)
    rows = pa.concat_tables([read_training_set(tmp_path / "training_set", s) for s in SPLITS
                             if stats.splits[s].rows]).to_pylist()
    return sorted(rows, key=lambda r: (r["user_id"], r["event_timestamp"], r["item_id"])), stats


def test_user_features_are_those_of_the_event_time_within_ttl(tmp_path):
    users = [(1, 0, 20, "fr"), (1, 5, 30, "de")]
    events = [(1, "a", 1, 1), (1, "b", 4.99, 0), (1, "c", 5, 1), (1, "d", 15, 0), (1, "a", 15.01, 0), (2, "a", 3, 1)]
    rows, _ = build(tmp_path, events, users)
    got = [(r["user_id"], r["item_id"], r["age"], r["country"]) for r in rows]
    assert got == [
        (1, "a", 20.0, "fr"),   # the day-0 row
        (1, "b", 20.0, "fr"),   # the day-5 row is still in the future
        (1, "c", 30.0, "de"),   # a row stamped at the event's own time is known
        (1, "d", 30.0, "de"),   # exactly 10 days old: within the TTL
        (1, "a", None, None),   # older than the 10-day TTL: nothing
        (2, "a", None, None),   # a user without features
    ]
    assert rows[0]["category"] == "c_a" and rows[0]["tags"] == ["a"] and rows[0]["title"] == "title a"


def test_sequences_hold_only_events_strictly_before(tmp_path):
    events = [(1, "a", 1, 1), (1, "c", 2, 0), (1, "b", 2, 1), (1, "d", 3, 1), (1, "a", 4, 0), (1, "b", 5, 0)]
    rows, _ = build(tmp_path, events, [(1, 0, 20, "fr")])
    assert [(r["item_id"], r["hist_item_id"]) for r in rows] == [
        ("a", []),
        ("b", ["a"]),            # "c" happened at the same instant: not before
        ("c", ["a"]),
        ("d", ["a", "c", "b"]),  # "c" and "b" tie: in the order they were ingested
        ("a", ["c", "b", "d"]),  # the last 3, oldest first
        ("b", ["b", "d", "a"]),
    ]


def test_tied_events_keep_ingestion_order_and_a_cut_tie_keeps_the_latest_ingested(tmp_path):
    # Three events in one second, ingested with ids out of order (9, 5, 3), then one more: the window
    # of the last holds them as ingested, and a 2-long window keeps the two ingested last.
    events = [(1, "i9", 1, 1), (1, "i5", 1, 0), (1, "i3", 1, 1), (1, "i7", 2, 0)]
    items = ("i3", "i5", "i7", "i9")
    rows, _ = build(tmp_path / "three", events, [(1, 0, 20, "fr")], items=items)
    assert rows[-1]["item_id"] == "i7" and rows[-1]["hist_item_id"] == ["i9", "i5", "i3"]
    short = feature_store_tiny_definition(sequence_length=2)
    rows, _ = build(tmp_path / "two", events, [(1, 0, 20, "fr")], items=items, definition=short)
    assert rows[-1]["hist_item_id"] == ["i5", "i3"]  # by id it would be ["i5", "i9"]
    # Another ingestion order of the same events gives the other order: order is data, not an id.
    rows, _ = build(tmp_path / "reversed", [events[2], events[1], events[0], events[3]], [(1, 0, 20, "fr")],
                    items=items)
    assert rows[-1]["hist_item_id"] == ["i3", "i5", "i9"]


def test_online_sequences_order_ties_as_the_training_set_does(tmp_path):
    from feature_store.online import SEQUENCES_VIEW, materialize, open_online_store

    definition = feature_store_tiny_definition()
    store = OfflineStore(tmp_path / "offline", num_buckets=2)
    store.ingest(definition.view("events"), events_table([(1, "d", 1, 1), (1, "b", 2, 0), (1, "a", 2, 1),
                                                          (1, "c", 2, 0)]))
    with open_online_store(tmp_path / "online.sqlite", create=True) as online:
        materialize(store, definition, online)
        assert online.read(SEQUENCES_VIEW, [1]).rows[0]["hist_item_id"] == ["b", "a", "c"]


def brute_force(events, users, length, ttl_days):
    """The definition of a point-in-time row, written as plainly as possible (events in ingestion order)."""
    expected = []
    for user, item, day, _ in events:
        earlier = sorted((d, n, i) for n, (u, i, d, _) in enumerate(events) if u == user and d < day)
        known = [(d, age, country) for u, d, age, country in users if u == user and d <= day and day - d <= ttl_days]
        _, age, country = max(known) if known else (None, None, None)
        expected.append((user, item, day, [i for _, _, i in earlier][-length:], age and float(age), country))
    return sorted(expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_future_information_leaks(tmp_path, seed):
    rng = random.Random(seed)
    # Coarse days so that many events share an instant; no duplicates (tested separately).
    events = list({(rng.randrange(6), rng.choice("abcd"), rng.randrange(20), 0) for _ in range(120)})
    users = list({(u, d): (u, d, rng.randrange(18, 80), rng.choice(["fr", "de"]))
                  for u, d in {(rng.randrange(6), rng.randrange(20)) for _ in range(25)}}.values())
    rows, _ = build(tmp_path, events, users, num_buckets=3)
    got = sorted((r["user_id"], r["item_id"], (r["event_timestamp"] - feature_store_time(0)).days,
                  r["hist_item_id"], r["age"], r["country"]) for r in rows)
    assert got == brute_force(events, users, length=3, ttl_days=10)


def test_duplicate_events_count_once_and_the_last_ingested_wins(tmp_path):
    first = events_table([(1, "a", 1, 0), (1, "b", 2, 1)])
    resent = events_table([(1, "a", 1, 1)])  # same user, item and time: a corrected label
    rows, stats = build(tmp_path, [first, resent], [(1, 0, 20, "fr")])
    assert [(r["item_id"], r["label_click"]) for r in rows] == [("a", 1), ("b", 1)]
    assert stats.duplicates_dropped == 1
    assert rows[1]["hist_item_id"] == ["a"]


def test_input_order_does_not_matter_apart_from_ties(tmp_path):
    events = [(u, i, d, (u + d) % 2) for u in range(4) for i, d in zip("abcd", (3, 1, 2, 4), strict=True)]
    users = [(u, 0, 20 + u, "fr") for u in range(4)]
    in_order, _ = build(tmp_path / "sorted", sorted(events, key=lambda e: e[2]), users)
    shuffled = events[:]
    random.Random(7).shuffle(shuffled)
    out_of_order, _ = build(tmp_path / "shuffled", shuffled, users)
    assert in_order == out_of_order


def test_result_does_not_depend_on_the_number_of_buckets(tmp_path):
    rng = random.Random(3)
    events = list({(rng.randrange(30), rng.choice("abcd"), rng.randrange(40), rng.randrange(2)) for _ in range(300)})
    users = [(u, 0, 30, "de") for u in range(30)]
    one, _ = build(tmp_path / "one", events, users, num_buckets=1)
    many, _ = build(tmp_path / "many", events, users, num_buckets=7)
    assert one == many


def test_time_split_puts_each_event_by_its_time(tmp_path):
    definition = feature_store_tiny_definition()
    store = OfflineStore(tmp_path / "offline", num_buckets=2)
    store.ingest(definition.view("events"), events_table([(u, "a", d, 1) for u in range(5) for d in range(20)]))
    split = time_split_for(store, definition, SplitConfig(validation_fraction=0.2, test_fraction=0.1))
    # 5 events a day for 20 days: the last 30% start on day 14, the last 10% on day 18.
    assert split.validation_start == feature_store_time(14) and split.test_start == feature_store_time(18)
    stats = build_training_set(store, definition, tmp_path / "ts", split)
    assert {s: stats.splits[s].rows for s in SPLITS} == {"train": 70, "validation": 20, "test": 10}
    for name, lo, hi in (("train", None, split.validation_start), ("validation", split.validation_start,
                                                                    split.test_start), ("test", split.test_start, None)):
        times = read_training_set(tmp_path / "ts", name).column("event_timestamp").to_pylist()
        assert all((lo is None or t >= lo) and (hi is None or t < hi) for t in times)
    # Validation rows still see their training-period history.
    validation = read_training_set(tmp_path / "ts", "validation").to_pylist()
    assert all(len(r["hist_item_id"]) == 3 for r in validation)


def _split_of_each_event(tmp_path, events, config, num_buckets=3):
    _, stats = build(tmp_path, events, [(1, 0, 20, "fr")], items=sorted({e[1] for e in events}),
                     num_buckets=num_buckets, split=UserSplit(config))
    return {name: sorted((r["user_id"], r["item_id"]) for r in read_training_set(tmp_path / "training_set", name)
                         .to_pylist()) if stats.splits[name].rows else [] for name in SPLITS}, stats


def test_user_time_split_tests_each_users_latest_events(tmp_path):
    # User u has 10 * (u + 1) events on distinct days, items named by their order.
    events = [(u, f"i{k:02d}", k, 1) for u in range(3) for k in range(10 * (u + 1))]
    split, stats = _split_of_each_event(tmp_path, events, SplitConfig("user_time"))
    for u in range(3):
        n = 10 * (u + 1)
        test = [item for user, item in split["test"] if user == u]
        validation = [item for user, item in split["validation"] if user == u]
        # the last 20% test, the 10% before validation (at least one each)
        assert test == [f"i{k:02d}" for k in range(n - 2 * (u + 1), n)]
        assert validation == [f"i{k:02d}" for k in range(n - 3 * (u + 1), n - 2 * (u + 1))]
    assert stats.splits["test"].users == 3 and stats.splits["validation"].users == 3


def test_leave_one_out_keeps_history_for_every_user(tmp_path):
    events = [(0, "a", 1, 1), (1, "a", 1, 1), (1, "b", 2, 1), (2, "a", 1, 1), (2, "b", 2, 0), (2, "c", 3, 1)]
    split, _ = _split_of_each_event(tmp_path, events, SplitConfig("leave_one_out"))
    # one event: it only trains; two: the last is test; three: test, validation and one to train on
    assert split == {"train": [(0, "a"), (1, "a"), (2, "a")], "validation": [(2, "b")], "test": [(1, "b"), (2, "c")]}


def test_ties_in_time_follow_ingestion_order_or_a_seed(tmp_path):
    # Ten events of one user in the same second, after one earlier event: which is "last" is a rule.
    events = [(7, "early", 0, 1)] + [(7, f"t{k}", 5, 1) for k in range(10)]
    ingested, _ = _split_of_each_event(tmp_path / "a", events, SplitConfig("leave_one_out"))
    assert ingested["test"] == [(7, "t9")] and ingested["validation"] == [(7, "t8")]
    seeded = [_split_of_each_event(tmp_path / f"s{seed}", events, SplitConfig("leave_one_out", tie_seed=seed))[0]
              for seed in (0, 0, 1, 2)]
    assert seeded[0] == seeded[1]  # the same seed, the same split
    assert len({tuple(s["test"]) for s in seeded}) > 1  # other seeds pick other tied events
    assert all(("early" not in {i for _, i in s["test"] + s["validation"]}) for s in seeded)


def test_split_fractions_are_validated():
    with pytest.raises(ValueError, match="leave some events for training"):
        SplitConfig("global_time", 0.5, 0.5)
    with pytest.raises(ValueError, match="unknown"):
        SplitConfig("random")
    with pytest.raises(ValueError, match="no fractions"):
        SplitConfig("leave_one_out", test_fraction=0.2)
    with pytest.raises(ValueError, match="before validation_start"):
        TimeSplit(feature_store_time(2), feature_store_time(1))


def test_building_without_events_says_so(tmp_path):
    definition = feature_store_tiny_definition()
    store = OfflineStore(tmp_path / "offline")
    with pytest.raises(FeatureStoreError, match="no events"):
        build_training_set(store, definition, tmp_path / "ts", FAR_FUTURE)


def test_a_rebuild_replaces_the_previous_training_set(tmp_path):
    build(tmp_path, [(1, "a", 1, 1), (1, "b", 2, 0)], [(1, 0, 20, "fr")])
    definition = feature_store_tiny_definition()
    store = OfflineStore(tmp_path / "offline")
    store.ingest(definition.view("events"), events_table([(1, "c", 3, 1)]))
    build_training_set(store, definition, tmp_path / "training_set", FAR_FUTURE)
    assert read_training_set(tmp_path / "training_set", "train").num_rows == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_ttl_uses_event_time_not_wall_clock(tmp_path):
    definition = feature_store_tiny_definition(user_ttl_days=None)
    rows, _ = build(tmp_path, [(1, "a", 400, 1)], [(1, 0, 20, "fr")], definition=definition)
    assert rows[0]["age"] == 20.0  # no TTL: a year-old row still holds


def test_a_per_user_protocol_is_refused_on_a_dataset_of_one_event_per_user(tmp_path):
    from feature_store.prepare import prepare_dataset
    from feature_store.sources import SourceOptions

    target = tmp_path / "adult"
    with pytest.raises(FeatureStoreError, match=r"adult: the leave_one_out split needs users with at least two "
                                                r"events .* Use --split global_time"):
        prepare_dataset("adult", target, options=SourceOptions(max_events=300), split=SplitConfig("leave_one_out"))
    assert not target.exists()
