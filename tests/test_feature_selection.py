"""What the model reads: feature selection in the training config, no per-row identifier as a
feature, scenario tasks whose labels are missing outside their scenario (MovieLens per genre), and
evaluation that skips per-user metrics when every user has one row."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from conftest import feature_store_tiny_definition

from feature_store.definitions import DatasetDefinition, select_features
from feature_store.prepare import prepare_dataset
from feature_store.sources import SourceOptions
from feature_store.sources.movielens_genres import SCENARIO_GENRES, genre_task_name
from feature_store.transforms import TransformSet
from grec import TaskSpec
from jobs.evaluate.job import one_row_per_user
from jobs.train.config import ConfigError, resolve
from jobs.train.metrics import ValidationAccumulator

def tiny_spec() -> dict:
    definition = feature_store_tiny_definition()
    train = pa.table({
        "user_id": [1, 2], "item_id": ["a", "b"], "device": ["ios", None], "age": [30.0, 40.0],
        "country": ["fr", "de"], "category": ["x", "x"], "tags": [["t1"], []], "title": ["A", "B"],
        "hist_item_id": [[], ["a"]], "label_click": [1, 0], "label_rating": [4.0, 2.0], "label_tier": [0, 2],
    })
    return definition.dataset_spec(TransformSet.fit(definition, [train]).vocab_sizes())


def names(spec: dict) -> list[str]:
    return [e["name"] for group in ("categorical", "numeric", "sequences", "text") for e in spec[group]]


def test_include_and_exclude_choose_the_features_and_keep_keys_and_tasks():
    spec = tiny_spec()
    assert names(select_features(spec, exclude=["device", "title"])) == [
        "user_id", "item_id", "country", "category", "tags", "age", "hist_item_id"]
    chosen = select_features(spec, include=["item_id", "age", "hist_item_id"])
    assert names(chosen) == ["item_id", "age", "hist_item_id"]
    assert chosen["tasks"] == spec["tasks"] and chosen["user_id"] == "user_id"  # keys stay for evaluation
    assert select_features(spec) == spec


@pytest.mark.parametrize(("include", "exclude", "message"), [
    (None, ["colour"], r"exclude names unknown features \['colour'\]"),
    (["age", "size"], [], r"include names unknown features \['size'\]"),
    (["age"], ["age"], r"include and exclude both name \['age'\]"),
    (None, ["item_id"], r"sequence 'hist_item_id' uses the vocabulary of 'item_id'.*keep 'item_id' or leave out"),
    (["user_id"], ["user_id"], "both name"),
])
def test_a_bad_selection_names_the_list_and_the_feature(include, exclude, message):
    with pytest.raises(ValueError, match=message):
        select_features(tiny_spec(), include=include, exclude=exclude)


@pytest.fixture(scope="module")
def prepared_small(tmp_path_factory):
    """Adult, Women's Clothing and MovieLens per genre, a few hundred rows each."""
    root = tmp_path_factory.mktemp("selection")
    return {name: prepare_dataset(name, root / name, options=SourceOptions(max_events=events, sequence_length=5))
            for name, events in (("adult", 300), ("womens-clothing", 300), ("movielens-100k-genres", 3000))}


@pytest.mark.parametrize("name", ["adult", "womens-clothing"])
def test_a_key_that_names_one_row_is_no_model_input(prepared_small, name):
    prepared = prepared_small[name]
    spec = prepared.spec()
    assert "user_id" not in names(spec) and spec["user_id"] == "user_id"
    definition = prepared.definition()
    assert not definition.user.feature
    assert DatasetDefinition.from_dict(definition.to_dict()) == definition  # the flag survives definition.json
    assert prepared.read_split("train").column("user_id").null_count == 0  # still a key of every row


def test_womens_clothing_offers_a_bag_of_review_words(prepared_small):
    prepared = prepared_small["womens-clothing"]
    rows = prepared.read_split("train").slice(0, 50).to_pylist()
    for row in rows:
        text = f"{row['review_title'] or ''} {row['review_text'] or ''}".lower()
        assert row["review_words"] == sorted(set(row["review_words"])) and all(w in text for w in row["review_words"])
    assert any(e["name"] == "review_words" and e["multi_hot"] for e in prepared.spec()["categorical"])


def test_the_training_config_selects_features_and_names_the_key_on_error(prepared_small, train_tiny_config, tmp_path):
    prepared = prepared_small["adult"]
    config = train_tiny_config(prepared.root, f"sqlite:///{tmp_path / 'mlflow.db'}",
                               features={"exclude": ["fnlwgt", "age_range"]}, training={
                                   "early_stopping": {"metric": "val/auc_mean", "mode": "max"}})
    spec = resolve(config).model_config.input
    assert "fnlwgt" not in [f.name for f in spec.numeric] and "age" in [f.name for f in spec.numeric]
    assert "age_range" not in [f.name for f in spec.categorical]
    with pytest.raises(ConfigError, match=r"features: exclude names unknown features \['salary'\]"):
        resolve(config.with_overrides(features={"exclude": ["salary"]}))


def test_movielens_genres_has_a_like_task_per_genre_labelled_on_its_movies_only(prepared_small):
    prepared = prepared_small["movielens-100k-genres"]
    tasks = prepared.definition().tasks
    assert len(tasks) == 4 + len(SCENARIO_GENRES) >= 20  # like, love, rating, rated and one per genre
    assert {t.descriptors["scenario"] for t in tasks[4:]} == set(SCENARIO_GENRES)
    rows = prepared.read_split("train", columns=["item_id", "label_like", "label_like_action", "label_like_drama"])
    movies = prepared.offline_store().read_view("movies", ["item_id", "genres"]).to_pylist()
    genres = {m["item_id"]: set(m["genres"]) for m in movies}
    for row in rows.to_pylist()[:500]:
        for genre, column in (("Action", "label_like_action"), ("Drama", "label_like_drama")):
            expected = row["label_like"] if genre in genres[row["item_id"]] else None
            assert row[column] == expected
    summary = prepared.summary()["splits"]["train"]
    action = summary["tasks"][genre_task_name("Action")]
    assert action["labelled_rows"] == pc.sum(pc.is_valid(rows["label_like_action"])).as_py() < summary["rows"]
    assert 0 < action["positive_rate"] < 1


def test_validation_metrics_leave_out_rows_without_a_label():
    accumulator = ValidationAccumulator([TaskSpec("like_drama", "binary", "label_like_drama")])
    scores = torch.tensor([0.9, 0.2, 0.8, 0.1])
    labels = torch.tensor([1.0, 0.0, float("nan"), float("nan")])
    accumulator.update({"like_drama": scores}, {"like_drama": labels}, loss=0.5, rows=4)
    metrics = accumulator.compute()
    assert metrics["val/like_drama/auc"] == 1.0 and not math.isnan(metrics["val/auc_mean"])


def test_per_user_metrics_are_skipped_only_when_every_user_has_one_row():
    assert one_row_per_user(np.array(["r1", "r2", "r3"]), np.array(["r0"]))
    assert not one_row_per_user(np.array(["r1", "r1", "r3"]), None)  # a user with two rows
    assert not one_row_per_user(np.array([1, 2]), np.array([2, 5]))  # user 2 was seen in training


def test_evaluation_says_it_skips_per_user_metrics_when_each_user_has_one_row(tmp_path):
    from grec import InputSpec
    from jobs.evaluate.inference import score_column
    from jobs.evaluate.job import EvaluationConfig, ResolvedModel, evaluate_scores
    from jobs.evaluate.slices import UserActivity
    from jobs.evaluate.report import render_markdown

    spec = InputSpec.from_dict({"name": "people", "numeric": [{"name": "age"}], "timestamp": "t",
                                "tasks": [{"name": "income", "kind": "binary", "label": "label_income"}]})
    model = ResolvedModel("models:/m/1", "m", "1", spec, transforms=None)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)

    def evaluate(users: list) -> dict:
        scored = pa.table({"user_id": users, "label_income": labels.astype(float),
                           score_column("income"): labels * 0.5 + rng.random(200) * 0.5})
        result, _ = evaluate_scores(model, "people", scored, EvaluationConfig(resamples=0),
                                    train_activity=UserActivity.of(np.array(["x"])))
        return result

    single = evaluate([f"p{i}" for i in range(200)])
    assert "gauc" not in single.tasks[0].metrics and not single.tasks[0].slices
    assert "every user of the split has one row" in render_markdown(single, [], tmp_path)
    repeated = evaluate([f"p{i % 50}" for i in range(200)])
    assert "gauc" in repeated.tasks[0].metrics and "Skipped" not in render_markdown(repeated, [], tmp_path)
