"""build-index's fit reads the splits batch by batch into compact arrays, counts popularity in chunks
and co-visitation in row blocks, and trains the next-item model from per-user runs of one array: the
stage it fits on MovieLens is the one its sources give when fitted on whole splits, read at once and
sorted (user, time, split, row order), with the settings the fit chose."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from grec import covisitation as cov
from grec.covisitation import build_covisitation
from grec.next_item import train_next_item
from recommend import offline, popularity
from recommend.fit import targets_of
from recommend.popularity import ItemPopularity

from conftest import serving_train_tiny_model, tiny_stage_config


def _whole_split_sequences(prepared, row_of: dict) -> tuple[list, list, np.ndarray, np.ndarray]:
    """Each user's (catalogue rows, times) over train + validation, and every event's row and time,
    from the two splits read whole."""
    definition = prepared.definition()
    user, item, time = definition.user.join_key, definition.item.join_key, definition.timestamp_field
    parts = [prepared.read_split(split).select([user, item, time]).append_column(
        "_split", pa.array(np.full(prepared.read_split(split).num_rows, code, np.int8)))
        for code, split in enumerate(("train", "validation"))]
    table = pa.concat_tables(parts)
    users = table.column(user).to_numpy()
    times = table.column(time).cast(pa.int64()).to_numpy() / 1e6
    order = np.lexsort((np.arange(len(users)), table.column("_split").to_numpy(), times, users))
    rows = np.array([row_of[i] for i in table.column(item).to_pylist()], np.int32)[order]
    users, times = users[order], times[order]
    bounds = np.flatnonzero(np.r_[True, users[1:] != users[:-1], True])
    return ([rows[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
            [times[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)], rows, times)


@pytest.fixture(scope="module")
def fitted(tiny_movielens):
    from recommend.fit import StageFitter

    prepared = tiny_movielens
    model = serving_train_tiny_model(prepared, seed=0)
    loaded = SimpleNamespace(model=model, transforms=prepared.transforms(), spec=model.config.input,
                             definition=prepared.definition())
    config = tiny_stage_config().model_copy(update={"item_features": False, "ranker_terms": False})
    return prepared, config, StageFitter(loaded, prepared, config)


def test_the_streamed_stage_is_the_whole_split_fit(fitted, monkeypatch) -> None:
    prepared, config, fitter = fitted
    # Small batches, chunks and blocks: the streamed paths run many times over 600 events.
    monkeypatch.setattr(offline, "READ_BATCH_ROWS", 37)
    monkeypatch.setattr(popularity, "EVENTS_PER_CHUNK", 53)
    monkeypatch.setattr(cov, "EVENTS_PER_CHUNK", 41)
    stage, report = fitter.run()
    row_of = {item: row for row, item in enumerate(stage.item_ids, start=1)}
    sequences, times, rows, stamps = _whole_split_sequences(prepared, row_of)

    expected = ItemPopularity.from_events(rows, stamps, len(stage.item_ids))
    assert stage.popularity.first_day == expected.first_day
    assert np.array_equal(stage.popularity.daily.toarray(), expected.daily.toarray())
    covisitation = build_covisitation(sequences, len(stage.item_ids), stage.covisitation.config)
    assert (stage.covisitation.matrix != covisitation.matrix).nnz == 0
    model, _ = train_next_item(sequences, times, len(stage.item_ids), config.next_item,
                               epochs=report["next_item"]["epochs"])
    got, want = stage.next_item.state_dict(), model.state_dict()
    assert got.keys() == want.keys()
    assert all(np.array_equal(got[name].numpy(), want[name].numpy()) for name in got)
    assert set(stage.blends) == set(targets_of(prepared.definition())) and report["validation_users"] > 0
