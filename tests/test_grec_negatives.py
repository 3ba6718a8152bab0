"""Sampled negatives for implicit-feedback tasks (grec/negatives.py): what a copy holds, and that
training an implicit task through them learns which items a user takes up."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from grec.negatives import add_sampled_negatives, item_side_columns
from grec.spec import CategoricalFeature, InputSpec, NumericFeature, TaskSpec, TextFeature


def _spec() -> InputSpec:
    return InputSpec(
        name="clicks",
        categorical=(CategoricalFeature("user_id", 10, source="user"), CategoricalFeature("item_id", 10, source="item"),
                     CategoricalFeature("device", 4, source="context")),
        numeric=(NumericFeature("price", source="item"), NumericFeature("age", source="user")),
        text=(TextFeature("title", source="item"),),
        tasks=(TaskSpec("clicked", "binary", "label_clicked", implicit=True),
               TaskSpec("rating", "regression", "label_rating", role="auxiliary")),
    )


def _table() -> pa.Table:
    return pa.table({"user_id": pa.array([1, 2, 3, 4], pa.int64()), "item_id": pa.array([5, 6, 7, 5], pa.int64()),
                     "device": pa.array([1, 1, 2, 3], pa.int64()), "price": pa.array([0.5, 1.5, 2.5, 0.5], pa.float32()),
                     "age": pa.array([10.0, 20.0, 30.0, 40.0], pa.float32()),
                     "title": pa.array(["five", "six", "seven", "five"]),
                     "label_clicked": pa.array([1.0] * 4, pa.float32()),
                     "label_rating": pa.array([4.0, 3.0, 5.0, 1.0], pa.float32())})


def test_copies_take_another_rows_item_and_label_only_the_implicit_task():
    spec, table = _spec(), _table()
    assert item_side_columns(spec) == ["item_id", "price", "title"]
    out = add_sampled_negatives(table, spec, per_positive=2, seed=0)
    assert out.num_rows == 12 and out.slice(0, 4).equals(table)
    copies = out.slice(4).to_pylist()
    titles = {5: "five", 6: "six", 7: "seven"}
    for index, row in enumerate(copies):
        own = table.slice(index % 4, 1).to_pylist()[0]
        assert (row["user_id"], row["device"], row["age"]) == (own["user_id"], own["device"], own["age"])
        assert row["title"] == titles[row["item_id"]]  # the item's columns move together
        assert np.isnan(row["label_rating"])  # other tasks: missing on copies
        if row["item_id"] == own["item_id"]:
            assert np.isnan(row["label_clicked"])  # the user's own item is not a negative
        else:
            assert row["label_clicked"] == 0.0
    # the same batch gets the same negatives (a resumed epoch replays them)
    assert add_sampled_negatives(table, spec, per_positive=2, seed=0).to_pandas().equals(out.to_pandas())


def test_nothing_changes_without_an_implicit_task_or_its_label():
    spec, table = _spec(), _table()
    explicit = InputSpec(**{**{f: getattr(spec, f) for f in ("name", "categorical", "numeric", "text")},
                            "tasks": (TaskSpec("rating", "regression", "label_rating"),)})
    assert add_sampled_negatives(table, explicit, 4).equals(table)
    unlabelled = table.drop(["label_clicked", "label_rating"])  # serving rows
    assert add_sampled_negatives(unlabelled, spec, 4).equals(unlabelled)


def test_a_model_learns_an_implicit_task_from_sampled_negatives(grec_config):
    """Users of two groups take up only their group's items: trained on positives alone plus sampled
    negatives, the model scores a user's own group above the other."""
    from grec import build_model
    from jobs.train.in_process import train_steps

    spec = InputSpec(name="groups", categorical=(CategoricalFeature("user_id", 21, source="user"),
                                                 CategoricalFeature("item_id", 21, source="item")),
                     tasks=(TaskSpec("clicked", "binary", "label_clicked", implicit=True),))
    rng = np.random.default_rng(0)
    users = rng.integers(1, 21, size=600)
    items = np.array([rng.choice(np.arange(2 - u % 2, 21, 2)) for u in users])  # an item of the user's parity
    table = pa.table({"user_id": pa.array(users, pa.int64()), "item_id": pa.array(items, pa.int64()),
                      "label_clicked": pa.array(np.ones(len(users)), pa.float32())})
    model = train_steps(build_model(grec_config(input=spec)), table, steps=800, batch_size=64, lr=0.01, seed=0)
    grid_users, grid_items = np.meshgrid(np.arange(1, 21), np.arange(1, 21), indexing="ij")
    grid = pa.table({"user_id": pa.array(grid_users.ravel(), pa.int64()),
                     "item_id": pa.array(grid_items.ravel(), pa.int64())})
    scores = model.predict(model.collate(grid))["clicked"].numpy()
    own = (grid_users.ravel() % 2) == (grid_items.ravel() % 2)
    assert scores[own].mean() - scores[~own].mean() > 0.1
