"""Definitions as code: validation at construction, the dataset spec, the JSON round trip."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import feature_store_tiny_definition

from feature_store.definitions import (DatasetDefinition, Entity, Feature, FeatureKind, FeatureView, SequenceFeature,
                                       Task, categorical, numeric)
from feature_store.transforms import TransformSet


def test_dataset_spec_has_the_contract_layout():
    definition = feature_store_tiny_definition()
    train = pa.table({
        "user_id": [1, 2], "item_id": ["a", "b"], "device": ["ios", None], "age": [30.0, 40.0],
        "country": ["fr", "de"], "category": ["x", "x"], "tags": [["t1"], []], "title": ["A", "B"],
        "hist_item_id": [[], ["a"]], "label_click": [1, 0], "label_rating": [4.0, 2.0], "label_tier": [0, 2],
    })
    transforms = TransformSet.fit(definition, [train], oov_buckets=4)
    spec = definition.dataset_spec(transforms.vocab_sizes())
    assert spec["user_id"] == "user_id" and spec["item_id"] == "item_id" and spec["timestamp"] == "event_timestamp"
    by_name = {c["name"]: c for c in spec["categorical"]}
    assert list(by_name) == ["user_id", "item_id", "country", "category", "tags", "device"]
    assert by_name["user_id"] == {"name": "user_id", "vocab_size": 1 + 4 + 2, "multi_hot": False, "source": "user"}
    assert by_name["tags"]["multi_hot"] and by_name["tags"]["source"] == "item"
    assert by_name["device"]["source"] == "context"
    assert spec["numeric"] == [{"name": "age", "source": "user"}]
    assert spec["sequences"] == [{"name": "hist_item_id", "length": 3, "vocab_feature": "item_id"}]
    assert spec["text"] == [{"name": "title", "source": "item", "max_length": 32}]
    assert spec["tasks"][0] == {"name": "click", "kind": "binary", "label": "label_click", "role": "main",
                                "num_classes": None, "descriptors": {"type": "click"}, "implicit": False}
    assert spec["tasks"][2]["num_classes"] == 3


def test_definition_json_round_trip(tmp_path):
    definition = feature_store_tiny_definition()
    definition.save(tmp_path / "definition.json")
    loaded = DatasetDefinition.load(tmp_path / "definition.json")
    assert loaded == definition
    assert loaded.training_schema() == definition.training_schema()


def test_training_schema_orders_keys_features_sequences_labels():
    schema = feature_store_tiny_definition().training_schema()
    assert schema.names == ["user_id", "item_id", "event_timestamp", "device", "age", "country", "category",
                            "tags", "title", "hist_item_id", "label_click", "label_rating", "label_tier"]
    assert schema.field("hist_item_id").type == pa.list_(pa.string())
    assert "label_click" not in feature_store_tiny_definition().training_schema(include_labels=False).names


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Feature("age", FeatureKind.NUMERIC, pa.string()), "integer or floating"),
    (lambda: Task("t", "binary", missing_labels=True, implicit=True), "label on every event"),
    (lambda: Task("t", "ranking"), "ranking"),
    (lambda: SequenceFeature("h", length=0), "length must be >= 1"),
])
def test_invalid_parts_fail_with_what_is_wrong(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_invalid_datasets_fail_with_what_is_wrong():
    user, item = Entity("user", "user_id"), Entity("item", "item_id")
    main = Task("click", "binary")
    with pytest.raises(ValueError, match="role 'main'"):
        DatasetDefinition("d", user, item, tasks=(Task("x", "binary", role="auxiliary"),))
    with pytest.raises(ValueError, match="duplicate names"):
        DatasetDefinition("d", user, item, tasks=(main,), feature_views=(
            FeatureView("a", user, (numeric("age"),)), FeatureView("b", user, (numeric("age"),))))
    with pytest.raises(ValueError, match="reads event column 'page'"):
        DatasetDefinition("d", user, item, tasks=(main,), sequences=(SequenceFeature("h", field="page"),))
    with pytest.raises(ValueError, match="not a categorical feature"):
        DatasetDefinition("d", user, item, tasks=(main,), context_features=(categorical("page"),),
                          sequences=(SequenceFeature("h", field="page", vocab_feature="page_id"),))
    with pytest.raises(ValueError, match="keys on entity 'shop'"):
        DatasetDefinition("d", user, item, tasks=(main,),
                          feature_views=(FeatureView("s", Entity("shop", "shop_id"), (numeric("size"),)),))
