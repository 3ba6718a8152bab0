"""A served version's candidates, loaded in-process: the recommendation stage that `grec build-index`
logged for it (tests/conftest.py builds one), read from the online store as the endpoint reads the
user, and popularity for versions without a stage."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from feature_store.online import SeenItems, open_online_store
from registry.retrieval_index import INDEX_TAG
from registry.tracking import use_tracking_uri
from serving.config import ServingConfig
from serving.model_source import load_servable
from serving.retrieval import popular_items, stage_candidates, user_state

pytestmark = pytest.mark.slow


def _load_in_process(config: ServingConfig):
    """load_servable points the process's MLflow at the config's store, as in a replica: here, for
    the load only."""
    with use_tracking_uri(config.tracking_uri):
        return load_servable(config, "1")


@pytest.fixture(scope="module")
def servable(serving_app):
    return _load_in_process(ServingConfig(model_uri=f"models:/{serving_app.model_name}/1",
                                          tracking_uri=serving_app.tracking_uri))


@pytest.fixture(scope="module")
def store(serving_app):
    with open_online_store(serving_app.online_store) as online:
        yield online


def test_the_stage_is_logged_with_the_version_it_was_built_for(serving_app, servable):
    version = MlflowClient(tracking_uri=serving_app.tracking_uri).get_model_version(serving_app.model_name, "1")
    assert version.tags[INDEX_TAG].startswith(f"runs:/{version.run_id}/retrieval/v1")
    assert servable.stage is not None and servable.stage.metadata["splits"] == ["train", "validation"]


def test_the_store_holds_each_users_latest_events_in_order(serving_app, store):
    state = user_state(store, serving_app.prepared.definition(), serving_app.known_user, None)
    assert state.recent_items and len(state.recent_items) == len(state.recent_times)
    assert list(state.recent_times) == sorted(state.recent_times)
    assert set(state.recent_items) <= set(state.seen)


def test_a_known_users_candidates_leave_out_the_seen_set_and_carry_every_source(servable, serving_app, store):
    state = user_state(store, serving_app.prepared.definition(), serving_app.known_user, None)
    picked = stage_candidates(servable.stage, state, exclude_seen=True)
    assert picked.source == "retrieval" and picked.items and not set(picked.items) & set(state.seen)
    assert set(picked.terms) == set(servable.stage.sources)
    assert all(len(values) == len(picked.items) for values in picked.terms.values())


def test_popularity_follows_training_frequency_and_skips_seen_items(servable, serving_app):
    train_items = serving_app.prepared.read_split("train", columns=["item_id"]).column("item_id").to_pylist()
    counts = {item: train_items.count(item) for item in set(train_items)}
    top = popular_items(servable.popular, 10)
    assert [counts[item] for item in top] == sorted((counts[item] for item in top), reverse=True)
    assert counts[top[0]] == max(counts.values())
    assert top[0] not in popular_items(servable.popular, 10, SeenItems((top[0],)))


def test_a_configured_popularity_endpoint_loads_no_stage(serving_app):
    config = ServingConfig(model_uri=f"models:/{serving_app.model_name}/1", tracking_uri=serving_app.tracking_uri,
                           retrieval="popularity")
    assert _load_in_process(config).stage is None
