"""Per-user seen sets written by materialization: every item a user interacted with, exact."""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc
import pytest

from feature_store.online import SEEN_VIEW, SeenItems, materialize, open_online_store, read_seen


@pytest.fixture(scope="module")
def events(tiny_movielens):
    definition = tiny_movielens.definition()
    return tiny_movielens.offline_store().read_view(definition.events_name)


def _items_of(events, user, before=None):
    mine = events.filter(pc.equal(events.column("user_id"), user))
    if before is not None:
        mine = mine.filter(pc.less(mine.column("event_timestamp"), before))
    return set(mine.column("item_id").to_pylist())


def test_materialize_stores_every_item_each_user_interacted_with(tiny_movielens, events, tmp_path):
    with open_online_store(tmp_path / "online.sqlite", create=True) as store:
        stats = materialize(tiny_movielens.offline_store(), tiny_movielens.definition(), store)
        users = sorted(set(events.column("user_id").to_pylist()))
        assert stats.entities[SEEN_VIEW] == len(users)
        for user in users:
            seen = read_seen(store, user)
            assert set(seen) == _items_of(events, user)
            assert list(seen) == sorted(seen)  # stored sorted and distinct
        assert len(read_seen(store, 10**9)) == 0  # an unknown user has seen nothing


def test_materialize_as_of_a_past_moment_keeps_only_earlier_events(tiny_movielens, events, tmp_path):
    times = sorted(events.column("event_timestamp").to_pylist())
    moment = times[len(times) // 2]
    with open_online_store(tmp_path / "online.sqlite", create=True) as store:
        materialize(tiny_movielens.offline_store(), tiny_movielens.definition(), store, as_of=moment)
        for user in sorted(set(events.column("user_id").to_pylist())):
            assert set(read_seen(store, user)) == _items_of(events, user, before=moment)


def test_seen_items_membership_is_exact_and_keeps_id_types():
    seen = SeenItems((2, 5, 9))
    assert 5 in seen and 9 in seen
    assert 4 not in seen and 10 not in seen
    assert "5" not in seen and True not in SeenItems((0, 1))  # "5" and True are other ids than 5 and 1
    assert SeenItems(("a", "c")).without(["c", "b", "a", "d"]) == ["b", "d"]
    assert SeenItems.from_record({"items": [1, 3]}) == SeenItems((1, 3))
    assert len(SeenItems.from_record(None)) == 0


def test_as_of_is_point_in_time_for_feature_rows_too(tiny_movielens, tmp_path):
    # Static MovieLens attributes carry 1970-01-01: they exist at any later moment, at none before.
    with open_online_store(tmp_path / "online.sqlite", create=True) as store:
        stats = materialize(tiny_movielens.offline_store(), tiny_movielens.definition(), store,
                            as_of=dt.datetime(1969, 12, 31, tzinfo=dt.UTC))
    assert stats.entities["users"] == 0 and stats.entities[SEEN_VIEW] == 0
