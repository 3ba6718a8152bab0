"""Catalog retrieval for requests without candidates, on the registered model loaded in-process."""

from __future__ import annotations

import pytest

from serving.config import ServingConfig
from serving.model_source import load_servable

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servable(serving_app):
    config = ServingConfig(model_uri=f"models:/{serving_app.model_name}/1", tracking_uri=serving_app.tracking_uri)
    return load_servable(config, "1")


def test_popularity_follows_training_frequency_and_skips_seen_items(servable, serving_app):
    train_items = serving_app.prepared.read_split("train", columns=["item_id"]).column("item_id").to_pylist()
    counts = {item: train_items.count(item) for item in set(train_items)}
    top = servable.popular_items(10)
    assert [counts[item] for item in top] == sorted((counts[item] for item in top), reverse=True)
    assert counts[top[0]] == max(counts.values())
    assert top[0] not in servable.popular_items(10, exclude={top[0]})


def test_similar_items_are_known_unseen_items_and_cold_users_get_popular_ones(servable, serving_app):
    history = serving_app.known_items[:5]
    similar = servable.similar_items(history, 20)
    assert len(similar) == 20 and not set(similar) & set(history)
    assert set(similar) <= set(servable.transforms.vocabularies["item_id"].values)
    assert servable.similar_items([], 5) == servable.popular_items(5)
