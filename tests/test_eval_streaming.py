"""The folds of evaluate and build-index give what one pass over the whole split gives, whatever the
batches: the bounded user sample, each user's latest positive, each item's latest item side, train
activity, the index's item rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from grec import InputSpec
from jobs.evaluate import candidates as cand
from jobs.evaluate.sample import UserSample
from jobs.evaluate.slices import UserActivity

SPEC = InputSpec.from_dict({
    "name": "toy", "user_id": "user_id", "item_id": "item_id", "timestamp": "t",
    "categorical": [{"name": "user_id", "source": "user", "vocab_size": 50},
                    {"name": "item_id", "source": "item", "vocab_size": 50},
                    {"name": "genre", "source": "item", "vocab_size": 8}],
    "tasks": [{"name": "like", "kind": "binary", "label": "label_like"}],
})


def _rows(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table({"user_id": rng.integers(0, 40, n), "item_id": rng.integers(0, 30, n),
                     "t": rng.integers(0, 20, n),  # few distinct times: many ties
                     "genre": [f"g{v}" for v in rng.integers(0, 5, n)], "label_like": rng.integers(0, 2, n)})


def _batches(table: pa.Table, size: int) -> list[tuple[int, pa.Table]]:
    return [(start, table.slice(start, size)) for start in range(0, table.num_rows, size)]


@pytest.mark.parametrize("size", [1, 7, 64, 500])
def test_latest_positives_and_items_fold_to_the_whole_table_result(size: int) -> None:
    rows = _rows(500)
    latest, items = cand.LatestPositives(SPEC, "label_like"), cand.LatestItems(SPEC)
    for offset, batch in _batches(rows, size):
        latest.add(batch, offset)
        items.add(batch)
    for max_users in (5, 1000):
        assert latest.chosen(max_users, 3).tolist() == \
            cand.latest_positive_rows(rows, SPEC, "label_like", max_users, 3).tolist()
    assert items.table().equals(cand.item_catalogue(rows, SPEC))
    # each chosen row is its user's latest positive; of two at one time, the later row
    chosen = latest.chosen(1000, 0)
    table = rows.to_pandas()
    for number in chosen:
        user = table.user_id[number]
        mine = table[(table.user_id == user) & (table.label_like == 1)]
        assert number == mine[mine.t == mine.t.max()].index.max()


def test_user_sample_holds_whole_users_up_to_the_bound_in_any_batch_order() -> None:
    rows = _rows(3000, seed=1)
    whole = UserSample("user_id", 10_000)
    for _, batch in _batches(rows, 256):
        whole.add(batch)
    assert not whole.sampled and whole.table().num_rows == 3000

    held = []
    for order in (np.arange(3000), np.random.default_rng(2).permutation(3000)):
        sample = UserSample("user_id", 1000)
        shuffled = rows.take(pa.array(order))
        for _, batch in _batches(shuffled, 97):
            sample.add(batch)
        table = sample.table()
        assert sample.sampled and sample.rows_seen == 3000 and 0 < table.num_rows <= 1000
        users = set(table.column("user_id").to_pylist())
        # every row of each held user
        assert table.num_rows == sum(v in users for v in rows.column("user_id").to_pylist())
        held.append(sorted(table.to_pylist(), key=lambda r: tuple(r.values())))
    assert held[0] == held[1]


def test_train_activity_merges_batches_into_counts_per_user() -> None:
    users = np.array([3, 1, 3, 2, 3, 1])
    activity = UserActivity.of(np.zeros(0))
    for part in (users[:2], users[2:5], users[5:]):
        activity = activity.merged(part)
    assert activity.users.tolist() == [1, 2, 3] and activity.counts.tolist() == [2, 1, 3]
    named = UserActivity.of(np.zeros(0)).merged(np.array(["b", "a", "b"], dtype=object))
    assert named.users.tolist() == ["a", "b"] and named.counts.tolist() == [1, 2]


@pytest.mark.parametrize("size", [1, 13, 400])
def test_build_index_item_rows_fold_to_the_whole_table_result(size: int) -> None:
    from types import SimpleNamespace

    from recommend.rows import ItemRows, latest_item_rows

    rng = np.random.default_rng(0)
    rows = pa.table({"item_id": rng.integers(0, 30, 400), "user_id": rng.integers(0, 9, 400),
                     "ts": rng.integers(0, 10, 400), "f": rng.integers(0, 1000, 400)})
    definition = SimpleNamespace(item=SimpleNamespace(join_key="item_id"), timestamp_field="ts",
                                 views_of=lambda entity: [SimpleNamespace(features=[SimpleNamespace(name="f")])])
    whole = ItemRows(rows, definition)
    folded = ItemRows(latest_item_rows((b for _, b in _batches(rows, size)), definition), definition)
    items = list(whole.position)
    assert folded.table.num_rows == len(items) and folded.take(items).equals(whole.take(items))
