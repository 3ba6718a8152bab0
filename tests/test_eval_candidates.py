"""Leave-last-out candidates and the model/dataset compatibility check, on a small prepared
MovieLens-100K."""

from __future__ import annotations


import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from feature_store.prepare import prepare_dataset
from feature_store.sources import SourceOptions
from grec import InputSpec
from jobs.evaluate import candidates as cand
from jobs.evaluate.compatibility import IncompatibleDataError, check_compatible


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    return prepare_dataset("movielens-100k", tmp_path_factory.mktemp("ml") / "data",
                           options=SourceOptions(max_events=3000))


@pytest.fixture(scope="module")
def spec(prepared) -> InputSpec:
    return InputSpec.from_dict(prepared.spec())


def test_candidates_keep_the_user_side_and_swap_in_unseen_items(prepared, spec) -> None:
    rows = prepared.read_split("test")
    history = pa.concat_tables([prepared.read_split(s) for s in ("train", "validation", "test")])
    held_index = cand.latest_positive_rows(rows, spec, "label_like", max_users=10, seed=0)
    held = rows.take(pa.array(held_index))
    users = held.column("user_id").to_pylist()
    assert len(users) == len(set(users)) <= 10
    assert all(v == 1 for v in held.column("label_like").to_pylist())
    # each held-out row is its user's latest positive row
    for user, ts in zip(users, held.column("event_timestamp").to_pylist(), strict=True):
        mine = rows.filter(pc.and_(pc.equal(rows["user_id"], user), pc.equal(rows["label_like"], 1)))
        assert ts == max(mine.column("event_timestamp").to_pylist())

    catalogue = cand.item_catalogue(history, spec)
    assert catalogue.num_rows == len(set(history.column("item_id").to_pylist()))
    assert {"item_id", "title", "genres", "release_year"} <= set(catalogue.column_names)

    built = cand.build_candidates("like", held, catalogue, history.select(["user_id", "item_id"]), spec,
                                  negatives=20, seed=1)
    table = built.rows
    assert built.users == len(users) and table.num_rows == len(users) * 21
    seen = set(zip(history.column("user_id").to_pylist(), history.column("item_id").to_pylist(), strict=True))
    for row in table.to_pylist():
        held_row = held.slice(row[cand.GROUP], 1).to_pylist()[0]
        assert row["user_id"] == held_row["user_id"] and row["hist_item_id"] == held_row["hist_item_id"]
        if row[cand.POSITION] == 0:
            assert row["item_id"] == held_row["item_id"]
        else:
            assert (row["user_id"], row["item_id"]) not in seen  # never-seen items only
            title = catalogue.filter(pc.equal(catalogue["item_id"], row["item_id"])).column("title")[0].as_py()
            assert row["title"] == title  # the item side moves with the item

    groups = table.column(cand.GROUP).to_numpy()
    positions = table.column(cand.POSITION).to_numpy()
    scores = np.where(positions == 0, 1.0, 0.5)
    shuffled = np.random.default_rng(0).permutation(len(groups))
    matrix = cand.score_matrix(groups[shuffled], positions[shuffled], scores[shuffled], 20)
    assert (matrix[:, 0] == 1.0).all() and (matrix[:, 1:] == 0.5).all()


def test_users_without_enough_unseen_items_are_skipped(prepared, spec) -> None:
    rows = prepared.read_split("test")
    history = prepared.read_split("train")
    held = rows.take(pa.array(cand.latest_positive_rows(rows, spec, "label_like", 5, 0)))
    catalogue = cand.item_catalogue(history, spec)
    built = cand.build_candidates("like", held, catalogue, history.select(["user_id", "item_id"]), spec,
                                  negatives=catalogue.num_rows + 1, seed=0)
    assert built.users == 0 and built.skipped_users == held.num_rows


def test_compatible_model_and_dataset_pass(prepared, spec) -> None:
    schema = prepared.read_split("test").schema
    check_compatible("models:/m@challenger", spec, prepared.transforms(), spec, schema, "DATA")


def test_other_tasks_fail_with_a_message_naming_them(prepared, spec) -> None:
    schema = prepared.read_split("test").schema
    rating = spec.task("rating")
    other_tasks = spec.replace(tasks=(rating.replace(kind="binary"),
                                      rating.replace(name="income", label="label_income")))
    with pytest.raises(IncompatibleDataError) as err:
        check_compatible("models:/m@challenger", spec, prepared.transforms(), other_tasks, schema, "DATA")
    message = str(err.value)
    assert "models:/m@challenger cannot be evaluated on DATA" in message
    assert "no task(s) ['like', 'love', 'rated']" in message
    assert "task 'rating': kind is 'regression' in the model but 'binary' in the dataset" in message


def test_schema_mismatch_fails_naming_columns_and_types(prepared, spec) -> None:
    table = prepared.read_split("test")
    schema = table.drop_columns(["title"]).schema
    schema = schema.set(schema.get_field_index("genres"), pa.field("genres", pa.string()))
    with pytest.raises(IncompatibleDataError) as err:
        check_compatible("models:/m/1", spec, prepared.transforms(), spec, schema, "DATA")
    message = str(err.value)
    assert "the split has no column 'title' (text)" in message
    assert "column 'genres' is string; the model expects list<item: string>" in message
    fewer = spec.replace(text=())
    with pytest.raises(IncompatibleDataError, match=r"the dataset has no feature\(s\) \['title'\]"):
        check_compatible("models:/m/1", spec, prepared.transforms(), fewer, table.schema, "DATA")


def test_metrics_leave_out_rows_without_a_label_and_slice_by_train_history(prepared, spec) -> None:
    from jobs.evaluate.job import EvaluationConfig, ResolvedModel, evaluate_scores
    from jobs.evaluate.slices import UserActivity

    rng = np.random.default_rng(0)
    n = 60
    scored = pa.table({
        "user_id": pa.array(rng.integers(1, 8, n)),
        "item_id": pa.array(rng.integers(1, 50, n)),
        "label_like": pa.array([None, 1, 0, 1] + rng.integers(0, 2, n - 4).tolist(), pa.int64()),
        "label_love": pa.array(rng.integers(0, 2, n)),
        "label_rating": pa.array([float("nan")] + rng.uniform(1, 5, n - 1).tolist()),
        "score_like": pa.array(rng.uniform(0, 1, n), pa.float32()),
        "score_love": pa.array(rng.uniform(0, 1, n), pa.float32()),
        "score_rating": pa.array(rng.uniform(1, 5, n), pa.float32()),
    })
    model = ResolvedModel("models:/m/1", "m", "1", spec, prepared.transforms())
    config = EvaluationConfig(resamples=10, ranking_users=0)
    result, predictions = evaluate_scores(model, "movielens-100k", scored, config, train_activity=UserActivity.of(np.array([1, 1, 2, 3])))
    assert result.task("like").rows == n - 1 and result.task("rating").rows == n - 1 and result.task("love").rows == n
    assert not np.isnan(result.task("like").metrics["auc"].value)
    assert len(predictions["like"].labels) == n - 1
    slices = result.task("love").slices
    assert slices["new users"]["rows"] + slices["returning users"]["rows"] == n
