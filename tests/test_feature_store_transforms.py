"""Transforms: fitted on train only, stable OOV hashing, padding, standardization, the JSON
artifact and its version, numpy output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest
from conftest import REPO_ROOT, feature_store_tiny_definition, feature_store_time

from feature_store.errors import SchemaError
from feature_store.transforms import TransformSet

TS = pa.timestamp("us", tz="UTC")


def raw_rows(users, items, ages, hist, labels=True):
    n = len(users)
    columns = {
        "user_id": pa.array(users, pa.int64()), "item_id": pa.array(items),
        "event_timestamp": pa.array([feature_store_time(0)] * n, TS), "device": pa.array(["ios"] * n),
        "age": pa.array(ages, pa.float64()), "country": pa.array(["fr"] * n), "category": pa.array(["x"] * n),
        "tags": pa.array([["t1", "t2"]] * n), "title": pa.array([None] + ["T"] * (n - 1), pa.string()),
        "hist_item_id": pa.array(hist, pa.list_(pa.string())),
    }
    if labels:
        columns.update(label_click=pa.array([1] * n), label_rating=pa.array([3.5] * n),
                       label_tier=pa.array([2] * n))
    return pa.table(columns)


TRAIN = raw_rows([1, 1, 2], ["a", "b", "a"], [20.0, 30.0, None], [[], ["a"], ["a", "b"]])


@pytest.fixture
def transforms():
    return TransformSet.fit(feature_store_tiny_definition(), [TRAIN.slice(0, 2), TRAIN.slice(2)], oov_buckets=4)


def test_known_values_get_ids_after_padding_and_oov_buckets(transforms):
    out = transforms.transform(TRAIN)
    # "a" is seen twice, "b" once: ids in order of frequency after 0 (padding) and 1..4 (OOV).
    assert out.column("item_id").to_pylist() == [5, 6, 5]
    assert out.column("hist_item_id").to_pylist() == [[0, 0, 0], [0, 0, 5], [0, 5, 6]]
    assert out.column("tags").to_pylist() == [[5, 6]] * 3
    assert transforms.vocab_size("item_id") == 1 + 4 + 2


def test_values_unseen_in_train_hash_into_oov_buckets(transforms):
    later = raw_rows([3], ["z"], [25.0], [["a", "z", None, "b"]])
    out = transforms.transform(later)
    oov = out.column("item_id")[0].as_py()
    assert 1 <= oov <= 4
    assert out.column("hist_item_id").to_pylist() == [[oov, 0, 6]]  # last 3 of 4; a null id is 0
    assert 1 <= out.column("user_id")[0].as_py() <= 4


def test_oov_hash_is_stable_across_processes(transforms, tmp_path):
    transforms.save(tmp_path / "t.json")
    script = ("import pyarrow as pa, sys; from feature_store.transforms import TransformSet; "
              "t = TransformSet.load(sys.argv[1]); "
              "print(t.vocabularies['item_id'].encode(pa.array(['z', 'q', 'unseen-1', 'unseen-2'])).tolist())")
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO_ROOT)}
        outputs.add(subprocess.run([sys.executable, "-c", script, str(tmp_path / "t.json")], env=env,
                                   capture_output=True, text=True, check=True).stdout)
    assert len(outputs) == 1
    assert json.loads(outputs.pop()) == transforms.vocabularies["item_id"].encode(
        pa.array(["z", "q", "unseen-1", "unseen-2"])).tolist()


def test_numeric_standardized_with_train_statistics_and_missing_is_zero(transforms):
    out = transforms.transform(raw_rows([1, 1], ["a", "a"], [25.0, None], [[], []]))
    assert out.column("age").type == pa.float32()
    assert out.column("age").to_pylist() == [0.0, 0.0]  # 25 is the train mean of 20 and 30
    high = transforms.transform(raw_rows([1], ["a"], [30.0], [[]])).column("age")[0].as_py()
    assert high == pytest.approx(1.0)


def test_text_kept_raw_and_labels_typed(transforms):
    out = transforms.transform(TRAIN)
    assert out.column("title").to_pylist() == ["", "T", "T"]
    assert out.column("label_click").type == pa.float32()
    assert out.column("label_rating").type == pa.float32()
    assert out.column("label_tier").type == pa.int64()
    assert "event_timestamp" not in out.column_names


def test_labels_are_optional_features_are_not(transforms):
    request = raw_rows([1], ["a"], [20.0], [[]], labels=False)
    assert "label_click" not in transforms.transform(request).column_names
    with pytest.raises(SchemaError, match="no column 'country'"):
        transforms.transform(request.drop_columns(["country"]))


def test_fitting_uses_only_what_it_is_given():
    """prepare fits on the train split; a value only in later splits stays out of the vocabulary."""
    transforms = TransformSet.fit(feature_store_tiny_definition(), [TRAIN])
    assert "z" not in transforms.vocabularies["item_id"].values
    assert transforms.vocabularies["item_id"].values == ("a", "b")


def test_json_round_trip_and_version_check(transforms, tmp_path):
    path = tmp_path / "transforms.json"
    transforms.save(path)
    loaded = TransformSet.load(path)
    assert loaded.transform(TRAIN).equals(transforms.transform(TRAIN))
    data = json.loads(path.read_text())
    assert data["format"] == "grec.transforms" and data["version"] == 1
    data["version"] = 99
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="version 99 is not supported"):
        TransformSet.load(path)


def test_numpy_output_shapes(transforms):
    arrays = transforms.transform_to_numpy(TRAIN)
    assert arrays["item_id"].dtype == np.int64 and arrays["item_id"].shape == (3,)
    assert arrays["hist_item_id"].shape == (3, 3)
    assert arrays["age"].dtype == np.float32
    assert [a.tolist() for a in arrays["tags"]] == [[5, 6]] * 3
    assert arrays["title"].tolist() == ["", "T", "T"]
