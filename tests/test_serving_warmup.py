"""A scorer encodes the catalogue's item texts when it loads a version (serving/warmup.py): the first
requests then find every frequent item's title in the text cache, with the scores they would have
had without the warm-up; a store that does not answer ends the warm-up without failing the load."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import serving_train_tiny_model

from feature_store.online import DefaultsOnlyStore, OnlineStoreUnavailableError, materialize, open_online_store
from serving.features import RowsQuery, StoreGuard, request_rows
from serving.servable import ServableModel
from serving.warmup import WARM_CHUNK_ITEMS, warm_item_texts


def _servable(prepared) -> ServableModel:
    """A freshly loaded version: its text cache empty, as after a load from the registry."""
    model = serving_train_tiny_model(prepared, seed=0)
    model.encoder.text_encoder.clear_cache()
    return ServableModel(name="tiny", version="1", alias=None, uri="models:/tiny/1", model=model,
                         transforms=prepared.transforms(), spec=model.config.input, definition=prepared.definition())


@pytest.fixture(scope="module")
def store(tiny_movielens, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("warmup") / "online.sqlite")
    with open_online_store(path, create=True) as online:
        materialize(tiny_movielens.offline_store(), tiny_movielens.definition(), online)
    with open_online_store(path) as online:
        yield online


class _NotAnswering(DefaultsOnlyStore):
    """A store whose every read fails as a Redis past its retries does."""

    def _read_raw(self, view, keys):
        raise OnlineStoreUnavailableError("connection refused")


def test_a_warmed_version_scores_its_catalogue_without_encoding_a_title_and_with_the_same_scores(tiny_movielens,
                                                                                               store):
    warmed, cold = _servable(tiny_movielens), _servable(tiny_movielens)
    guard = StoreGuard(store, "degrade", 1.0)
    catalogue = warmed.popular
    assert len(catalogue) > WARM_CHUNK_ITEMS  # the warm-up goes chunk by chunk
    text = warmed.model.encoder.text_encoder
    assert warmed.model.encoder.item_texts and not text._cache
    before = text.cache_misses

    assert warm_item_texts(warmed, guard, most=10_000) == len(catalogue)
    assert len(text._cache) == text.cache_misses - before > 0  # each distinct title encoded once

    user = tiny_movielens.read_split("test").column("user_id")[0].as_py()
    rows = request_rows(guard, warmed.definition, RowsQuery(user, catalogue[:100])).rows
    misses, cold_misses = text.cache_misses, cold.model.encoder.text_encoder.cache_misses
    served = warmed.score("like", rows)
    assert text.cache_misses == misses  # nothing left to encode on first sight
    np.testing.assert_allclose(served.scores, cold.score("like", rows).scores, rtol=0, atol=1e-6)
    assert cold.model.encoder.text_encoder.cache_misses > cold_misses  # the cold one did encode them


def test_the_warm_up_stops_at_its_limit_and_is_off_at_0(tiny_movielens, store):
    servable = _servable(tiny_movielens)
    guard = StoreGuard(store, "degrade", 1.0)
    text = servable.model.encoder.text_encoder
    assert warm_item_texts(servable, guard, most=0) == 0 and not text._cache
    assert warm_item_texts(servable, guard, most=10) == 10
    assert 0 < len(text._cache) <= 10


@pytest.mark.parametrize("policy", ["degrade", "reject"])
def test_a_store_that_does_not_answer_ends_the_warm_up_and_leaves_the_version_loadable(tiny_movielens, policy):
    servable = _servable(tiny_movielens)
    assert warm_item_texts(servable, StoreGuard(_NotAnswering(), policy, 60.0), most=10_000) == 0
    assert not servable.model.encoder.text_encoder._cache
