"""`grec evaluate`, `grec promote` and `grec predict` end to end: a tiny GRec trained for a few steps
on 3000 MovieLens events, registered in a temporary SQLite MLflow store, scored by Ray Data."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import serving_register, serving_train_tiny_model
from mlflow import MlflowClient

from feature_store.prepare import prepare_dataset
from feature_store.sources import SourceOptions
from jobs.cli import main as grec_main
from jobs.evaluate.compatibility import IncompatibleDataError
from jobs.evaluate.job import EvaluationConfig, evaluate_model
from jobs.predict.predict import predict_to_parquet
from jobs.registry.promote import PromotionError, PromotionPolicy, promote
from registry.models import load_registered, set_alias
from registry.tracking import use_tracking_uri

NAME = "eval-tiny"


@pytest.fixture(scope="module")
def env(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("eval")
    prepared = prepare_dataset("movielens-100k", root / "data", options=SourceOptions(max_events=3000))
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    model = serving_train_tiny_model(prepared, seed=0, steps=4)
    serving_register(model, prepared, NAME, tracking_uri, alias="challenger")
    with use_tracking_uri(tracking_uri):
        yield {"root": root, "prepared": prepared, "tracking_uri": tracking_uri, "model": model,
               "client": MlflowClient()}


def _cli(env, *args: str) -> int:
    return grec_main([*args, "--tracking-uri", env["tracking_uri"]])


def test_evaluate_writes_the_report_logs_it_and_promotes_the_first_model(env, capsys, monkeypatch) -> None:
    # Without --out the report goes under .grec/reports/ in the working directory.
    monkeypatch.chdir(env["root"])
    out = env["root"] / ".grec" / "reports" / f"{NAME}-v1-test"
    code = _cli(env, "evaluate", "--model", f"models:/{NAME}@challenger", "--data", str(env["prepared"].root),
                "--resamples", "20", "--ranking-users", "10", "--negatives", "19", "--promote")
    assert code == 0
    assert not (env["root"] / "reports").exists()
    report = (out / "report.md").read_text()
    for task in ("like", "love", "rating"):
        assert f"| {task} |" in report
    assert "## Ranking (leave-last-out per user)" in report and "## Slices" in report
    result = json.loads((out / "evaluation.json").read_text())
    assert result["rows"] == env["prepared"].read_split("test").num_rows
    like = next(t for t in result["tasks"] if t["name"] == "like")
    assert like["metrics"]["auc"]["low"] <= like["metrics"]["auc"]["value"] <= like["metrics"]["auc"]["high"]
    assert 0 < like["ranking_users"] <= 10 and set(like["ranking"]) == {"hr@5", "ndcg@5", "hr@10", "ndcg@10"}

    client = env["client"]
    run_id = client.get_model_version(NAME, "1").run_id
    logged = client.get_run(run_id).data.metrics
    assert logged["eval_test_like_auc"] == pytest.approx(like["metrics"]["auc"]["value"])
    assert "eval_test_rating_rmse" in logged and "eval_test_like_hr_at_10" in logged
    artifacts = {a.path for a in client.list_artifacts(run_id, "evaluation/test")}
    assert {"evaluation/test/report.md", "evaluation/test/evaluation.json", "evaluation/test/plots"} <= artifacts

    # no champion yet: the evaluated challenger becomes champion, and the run says why
    assert "PROMOTED: challenger version 1 (champion before: none, now: 1)" in capsys.readouterr().out
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    assert client.get_run(run_id).data.tags["promotion.decision"] == "promoted"


def test_promotion_keeps_the_champion_without_evidence(env) -> None:
    client, data = env["client"], env["prepared"].root
    set_alias(NAME, "champion", "1", client)
    # the same weights again as a new challenger: every paired resample gains exactly 0, so the
    # interval of the average does not lie above 0 and the champion stays
    challenger = serving_register(env["model"], env["prepared"], NAME, env["tracking_uri"], alias="challenger")
    same = promote(NAME, data, PromotionPolicy(resamples=100))
    assert not same.decision.promote and "does not lie above" in same.decision.reason
    assert [(c.gain, c.gain_low, c.gain_high) for c in same.decision.comparisons] == [(0.0, 0.0, 0.0)] * 3
    assert same.champion == "1" and str(client.get_model_version_by_alias(NAME, "champion").version) == "1"
    run_id = client.get_model_version(NAME, challenger).run_id
    run = client.get_run(run_id).data
    assert run.tags["promotion.decision"] == "rejected"
    rows = env["prepared"].read_split("test").num_rows
    assert run.metrics["promotion_average_gain"] == 0.0 and run.metrics["promotion_rows"] == rows
    assert run.metrics["promotion_resamples"] == 100 and run.metrics["promotion_gain_like_low"] == 0.0
    evidence = json.loads(Path(client.download_artifacts(run_id, "promotion/promotion.json", str(env["root"])))
                          .read_text())
    assert evidence["champion_before"] == "1" and evidence["champion_after"] == "1"
    assert evidence["decision"]["rows"] == rows and evidence["policy"]["resamples"] == 100
    assert {c["task"]: c["rows"] for c in evidence["decision"]["comparisons"]} == {"like": rows, "love": rows,
                                                                                   "rating": rows}

    set_alias(NAME, "challenger", "1", client)
    again = promote(NAME, data)  # nothing to score
    assert not again.decision.promote and "already the champion" in again.decision.reason


def test_missing_challenger_model_or_version_is_a_clear_error(env, capsys) -> None:
    env["client"].create_registered_model("no-challenger")
    with pytest.raises(PromotionError, match="'no-challenger' has no 'challenger' alias"):
        promote("no-challenger", env["prepared"].root)
    with pytest.raises(PromotionError, match="no registered model named 'missing'"):
        promote("missing", env["prepared"].root)
    assert _cli(env, "promote", "--name", "missing", "--data", str(env["prepared"].root)) == 2
    assert "grec promote: error: there is no registered model named 'missing'" in capsys.readouterr().err
    assert _cli(env, "evaluate", "--model", f"models:/{NAME}/99", "--data", str(env["prepared"].root)) == 2
    assert f"grec evaluate: error: cannot load models:/{NAME}/99 from the MLflow registry" in capsys.readouterr().err


def test_a_dataset_with_other_tasks_fails_before_any_work(env) -> None:
    adult = prepare_dataset("adult", env["root"] / "adult", options=SourceOptions(max_events=400))
    out = env["root"] / "adult-report"
    with pytest.raises(IncompatibleDataError) as err:
        evaluate_model(f"models:/{NAME}/1", adult.root, EvaluationConfig(resamples=0), report_dir=out)
    message = str(err.value)
    assert f"models:/{NAME}/1 cannot be evaluated on" in message
    assert "the dataset has no task(s) ['like', 'love', 'rating']" in message
    assert not out.exists()


def test_predict_writes_keys_and_one_score_column_per_task(env) -> None:
    out = env["root"] / "predictions" / "test.parquet"
    summary = predict_to_parquet(f"models:/{NAME}/1", env["prepared"].root, out)
    table = pq.read_table(out)
    rows = env["prepared"].read_split("test")
    assert summary.rows == table.num_rows == rows.num_rows
    assert table.column_names == ["user_id", "item_id", "score_like", "score_love", "score_rating"]
    assert [p.name for p in out.parent.iterdir()] == ["test.parquet"]  # nothing partial left behind
    # the same scores as the registered pyfunc model gives for those raw rows
    expected = load_registered(f"models:/{NAME}/1").predict(rows.to_pandas())
    got = table.to_pandas().sort_values(["user_id", "item_id"]).reset_index(drop=True)
    want = pd.concat([rows.select(["user_id", "item_id"]).to_pandas(), expected], axis=1) \
        .sort_values(["user_id", "item_id"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False, atol=1e-5)
    with pytest.raises(ValueError, match="must name a .parquet file"):
        predict_to_parquet(f"models:/{NAME}/1", env["prepared"].root, env["root"] / "predictions.csv")
