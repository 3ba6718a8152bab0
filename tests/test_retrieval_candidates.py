"""Candidate sources of a served version, loaded in-process: the retrieval index that `grec
build-index` logged for it (tests/conftest.py builds one), and popularity."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest
from mlflow import MlflowClient

from feature_store.online import SeenItems, open_online_store
from registry.retrieval_index import INDEX_TAG
from serving.config import ServingConfig
from serving.model_source import load_servable
from serving.retrieval import Candidates, CandidateRetriever, user_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servable(serving_app):
    config = ServingConfig(model_uri=f"models:/{serving_app.model_name}/1", tracking_uri=serving_app.tracking_uri)
    return load_servable(config, "1")


@pytest.fixture(scope="module")
def store(serving_app):
    with open_online_store(serving_app.online_store) as online:
        yield online


def test_the_index_is_logged_with_the_version_it_was_built_for(serving_app):
    version = MlflowClient(tracking_uri=serving_app.tracking_uri, registry_uri=serving_app.tracking_uri).get_model_version(serving_app.model_name, "1")
    assert version.tags[INDEX_TAG].startswith(f"runs:/{version.run_id}/retrieval/v1")


def test_popularity_follows_training_frequency_and_skips_seen_items(servable, serving_app):
    train_items = serving_app.prepared.read_split("train", columns=["item_id"]).column("item_id").to_pylist()
    counts = {item: train_items.count(item) for item in set(train_items)}
    top = servable.retriever.popular(10)
    assert [counts[item] for item in top] == sorted((counts[item] for item in top), reverse=True)
    assert counts[top[0]] == max(counts.values())
    assert top[0] not in servable.retriever.popular(10, SeenItems((top[0],)))


def test_a_known_user_is_retrieved_from_the_index_without_seen_items(servable, serving_app, store):
    definition = serving_app.prepared.definition()
    state = user_state(store, definition, serving_app.known_user, None)
    assert not state.cold_start and len(state.seen) > 0
    picked = servable.retriever.candidates(state, 30)
    assert picked.source == "retrieval" and len(picked.items) == 30 and not set(picked.items) & set(state.seen)
    assert picked.logits == sorted(picked.logits, reverse=True)  # nearest first
    repeats = servable.retriever.candidates(state, 30, exclude_seen=False)
    assert repeats.items == servable.retriever.retrieve(state.rows, 30, SeenItems())[0]


def test_a_cold_user_or_a_version_without_an_index_gets_popularity(servable, serving_app, store):
    definition = serving_app.prepared.definition()
    cold = user_state(store, definition, 987_654_321, None)
    assert cold.cold_start
    assert servable.retriever.candidates(cold, 5) == Candidates(servable.retriever.popular(5), "popularity")
    warm = user_state(store, definition, serving_app.known_user, None)
    plain = CandidateRetriever(servable.model, servable.transforms, servable.spec)
    assert plain.candidates(warm, 5) == Candidates(plain.popular(5, warm.seen), "popularity")


def test_a_configured_popularity_endpoint_ignores_the_index(serving_app):
    config = ServingConfig(model_uri=f"models:/{serving_app.model_name}/1", tracking_uri=serving_app.tracking_uri,
                           retrieval="popularity")
    assert not load_servable(config, "1").retriever.has_index


def test_retrieved_items_are_in_the_catalogue(servable, serving_app, store):
    events = serving_app.prepared.read_split("train", columns=["user_id"])
    users = sorted(set(pc.unique(events.column("user_id")).to_pylist()))[:5]
    vocabulary = set(servable.transforms.vocabularies["item_id"].values)
    for user in users:
        state = user_state(store, serving_app.prepared.definition(), user, None)
        assert set(servable.retriever.candidates(state, 20).items) <= vocabulary
