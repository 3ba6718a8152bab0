"""build-index's and evaluate's reads of a prepared dataset stream batch by batch into compact arrays and
give what one pass over whole splits gives, whatever the batch size: the events in (user, time,
split, row) order, the users of a split and their first rows, a chosen subset of them, the same users
as catalogue rows in blocks; co-visitation
counts do not depend on how events are chunked or how many row blocks are counted, nor daily
popularity counts on the chunks they are counted in; the next-item model's training windows are those
of one window per list entry."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from grec import covisitation as cov
from grec.next_item import history_windows
from jobs.evaluate.catalogue_users import catalogue_users
from recommend import offline, popularity
from recommend.offline import read_interactions, relevant_runs, split_runs, split_users

SPLITS = ("train", "validation", "test")


class FakePrepared:
    """The two reads recommend.offline uses (definition, iter_split) over in-memory splits."""

    def __init__(self, tables: dict[str, pa.Table]) -> None:
        self.tables = tables

    def definition(self):
        return SimpleNamespace(user=SimpleNamespace(join_key="user_id"), item=SimpleNamespace(join_key="item_id"),
                               timestamp_field="t")

    def iter_split(self, split, columns=None, batch_size=65_536):
        table = self.tables.get(split)
        if table is None:
            return
        table = table.select(columns) if columns else table
        for start in range(0, table.num_rows, batch_size):
            yield table.slice(start, batch_size)


def _prepared(string_ids: bool, seed: int = 0) -> FakePrepared:
    rng = np.random.default_rng(seed)
    tables = {}
    for split, n in zip(SPLITS, (400, 120, 120), strict=True):
        users = rng.integers(0, 40, n)
        tables[split] = pa.table({
            "user_id": [f"u{u}" for u in users] if string_ids else users,
            "item_id": rng.integers(0, 30, n),
            "t": pa.array(rng.integers(0, 15, n) * 1_000_000, pa.timestamp("us")),  # few times: many ties
            "label_like": pa.array(rng.integers(0, 2, n).astype(float)),
            "other": rng.normal(size=n)})
    return FakePrepared(tables)


def _reference(prepared: FakePrepared, splits=SPLITS):
    """One table of every event, sorted by (user, time, split, row order), as plain arrays."""
    parts = [t.append_column("_split", pa.array(np.full(t.num_rows, SPLITS.index(s), np.int8)))
             for s, t in prepared.tables.items() if s in splits]
    table = pa.concat_tables(parts)
    users = np.array(table.column("user_id").to_pylist(), dtype=object)
    codes = {u: i for i, u in enumerate(sorted(set(users.tolist())))}
    times = table.column("t").cast(pa.int64()).to_numpy() / 1e6
    order = np.lexsort((np.arange(len(users)), table.column("_split").to_numpy(), times,
                        np.array([codes[u] for u in users])))
    return (users[order], table.column("item_id").to_numpy()[order], times[order],
            table.column("_split").to_numpy()[order], table.column("label_like").to_numpy()[order] == 1)


@pytest.mark.parametrize("string_ids", [False, True])
@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_interactions_stream_to_the_whole_table_result(string_ids: bool, batch: int, monkeypatch) -> None:
    monkeypatch.setattr(offline, "READ_BATCH_ROWS", batch)
    prepared = _prepared(string_ids)
    got = read_interactions(prepared, ["label_like"])
    users, items, times, splits, positives = _reference(prepared)
    assert got.users.tolist() == users.tolist()
    assert got.items.tolist() == items.tolist()
    assert np.array_equal(got.times, times) and np.array_equal(got.splits, splits)
    assert np.array_equal(got.positives["label_like"], positives)
    assert got.user_codes.dtype == np.int32 and got.item_codes.dtype == np.int32
    only = read_interactions(prepared, [], ("train", "validation"))
    assert only.users.tolist() == _reference(prepared, ("train", "validation"))[0].tolist()


@pytest.mark.parametrize("string_ids", [False, True])
def test_split_users_of_chosen_positions_are_the_subset_of_all(string_ids: bool, monkeypatch) -> None:
    monkeypatch.setattr(offline, "READ_BATCH_ROWS", 16)
    prepared = _prepared(string_ids, seed=1)
    targets = {"all": None, "like": "label_like"}
    interactions = read_interactions(prepared, ["label_like"])
    everyone = split_users(prepared, "test", targets, interactions)
    assert len(everyone.user_ids) == len(split_runs(interactions, "test")[0])
    # Each user's first row of the split: the earliest time, the earlier row of equal times.
    whole = prepared.tables["test"]
    for index, user in enumerate(everyone.user_ids):
        mine = whole.filter(pa.compute.equal(whole.column("user_id"), user)).sort_by([("t", "ascending")])
        assert everyone.rows.slice(index, 1).to_pylist() == mine.slice(0, 1).to_pylist()
    chosen = [0, 3, 4, len(everyone.user_ids) - 1]
    some = split_users(prepared, "test", targets, interactions, chosen)
    subset = everyone.subset(chosen)
    assert some.user_ids == subset.user_ids and some.truth == subset.truth
    assert [(list(h.items), list(h.times), h.exclude, h.now) for h in some.histories] == \
        [(list(h.items), list(h.times), h.exclude, h.now) for h in subset.histories]
    assert some.rows.to_pylist() == subset.rows.to_pylist()
    relevant = relevant_runs(interactions, "test", "label_like").tolist()
    assert relevant == [i for i, truth in enumerate(everyone.truth["like"]) if truth]
    assert split_users(prepared, "test", targets, interactions, []).rows.num_rows == 0


@pytest.mark.parametrize("label", [None, "label_like"])
@pytest.mark.parametrize("block", [1, 5, 1000])
def test_catalogue_users_in_blocks_are_split_users_in_catalogue_rows(label: str | None, block: int) -> None:
    prepared = _prepared(string_ids=True, seed=2)
    interactions = read_interactions(prepared, ["label_like"])
    everyone = split_users(prepared, "test", {"truth": label}, interactions)
    row_of = {item: row for row, item in enumerate(range(4, 30), start=1)}  # items 0-3 outside the catalogue
    row_of_code = np.array([row_of.get(i, 0) for i in interactions.item_values.tolist()])
    num_items = len(row_of)
    scores = np.random.default_rng(0).integers(0, 5, (len(everyone.user_ids), num_items)).astype(np.float32)
    positions = list(range(len(everyone.user_ids)))
    for start in range(0, len(positions), block):
        chosen = positions[start:start + block]
        got = catalogue_users(interactions, "test", label, chosen, row_of_code)
        users = everyone.subset(chosen)
        assert got.ids == users.user_ids
        assert got.now.tolist() == [h.now for h in users.histories]
        assert got.history_sizes.tolist() == [len(h.items) for h in users.histories]
        expected = np.zeros((len(chosen), num_items + 1), dtype=bool)
        for index, truth in enumerate(users.truth["truth"]):
            expected[index, [row_of[i] for i in truth if i in row_of]] = True
        assert np.array_equal(got.relevance(num_items), expected)
        assert got.truth_counts.tolist() == [len(t) for t in users.truth["truth"]]
        # each user's best unseen items: the seen set masked, ties to the lower row
        masked = scores[chosen].astype(np.float64)
        for index, history in enumerate(users.histories):
            masked[index, [row_of[i] - 1 for i in history.exclude if i in row_of]] = -np.inf
        top = np.argsort(-masked, axis=1, kind="stable")[:, :num_items]
        expected_top = np.where(np.isfinite(np.take_along_axis(masked, top, axis=1)), top + 1, 0)
        assert np.array_equal(got.top_rows(scores[chosen], num_items), expected_top)


def _sequences(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, 41, rng.integers(1, 30)).astype(np.int64) for _ in range(60)]


@pytest.mark.parametrize("backward", [0.5, 1.0 / 3.0])
def test_covisitation_does_not_depend_on_chunks_or_blocks(backward: float, monkeypatch) -> None:
    sequences = _sequences()
    config = cov.CovisitationConfig(window=4, backward_weight=backward, neighbours=6)

    def counts(max_entries: int):
        import scipy.sparse as sp

        return sp.vstack([b for _, b in cov.pair_count_blocks(sequences, 40, 4, backward, max_entries=max_entries)])

    whole, whole_pruned = counts(10**9), cov.build_covisitations(sequences, 40, [config], max_entries=10**9)[0].matrix
    monkeypatch.setattr(cov, "EVENTS_PER_CHUNK", 17)
    blocked, blocked_pruned = counts(50), cov.build_covisitations(sequences, 40, [config], max_entries=50)[0].matrix
    assert len(cov._blocks(cov.item_counts(sequences, 40), 4, 50)) > 3
    if backward == 0.5:  # whole-number weights: the sums are exact, so equal to the bit, and so are the cuts
        assert (whole != blocked).nnz == 0 and (whole_pruned != blocked_pruned).nnz == 0
    else:  # sums in float64 in another order: equal to rounding (equal entries at a row's cut may differ)
        assert np.allclose(whole.toarray(), blocked.toarray(), rtol=1e-12)
    # Against the definition: pairs within the window, 1/d forward, backward/d back, diagonal left out.
    dense = np.zeros((41, 41))
    for items in sequences:
        for i, a in enumerate(items):
            for d in range(1, 5):
                if i + d < len(items) and items[i + d] != a:
                    dense[a, items[i + d]] += 1.0 / d
                    dense[items[i + d], a] += backward / d
    assert np.allclose(whole.toarray(), dense, rtol=1e-12)


@pytest.mark.parametrize("chunk", [1, 7, 10**6])
def test_daily_popularity_counts_each_days_events_whatever_the_chunks(chunk: int, monkeypatch) -> None:
    monkeypatch.setattr(popularity, "EVENTS_PER_CHUNK", chunk)
    rng = np.random.default_rng(3)
    items = rng.integers(1, 21, 500).astype(np.int32)
    times = rng.uniform(3 * popularity.DAY_S, 40 * popularity.DAY_S, 500)
    got = popularity.ItemPopularity.from_events(items, times, 20)
    days = np.floor(times / popularity.DAY_S).astype(np.int64)
    expected = np.zeros((days.max() - days.min() + 1, 21), np.float32)
    np.add.at(expected, (days - days.min(), items), 1.0)
    assert got.first_day == days.min() and got.daily.dtype == np.float32
    assert np.array_equal(got.daily.toarray(), expected)
    assert got.daily.has_canonical_format


def test_history_windows_are_the_windows_of_each_sequence() -> None:
    sequences = _sequences(1)
    times = [np.sort(np.random.default_rng(i).integers(0, 100, len(s))).astype(np.float64)
             for i, s in enumerate(sequences)]
    length = 5
    inputs, targets, target_times = history_windows(sequences, times, length)
    expected = []
    for items, stamps in zip(sequences, times, strict=True):
        for end in range(len(items), 1, -length):
            start = max(0, end - length - 1)
            pad = length + 1 - (end - start)
            window = np.r_[np.zeros(pad, np.int64), items[start:end]]
            stamp = np.r_[np.full(pad, stamps[start]), stamps[start:end]]
            expected.append((window[:-1], window[1:], stamp[:-1] * (window[:-1] != 0), stamp[1:]))
    assert inputs.items.shape == (len(expected), length)
    for row, (items, target, stamp, target_stamp) in enumerate(expected):
        assert inputs.items[row].tolist() == items.tolist() and targets[row].tolist() == target.tolist()
        assert inputs.times[row].tolist() == stamp.tolist() and target_times[row].tolist() == target_stamp.tolist()
