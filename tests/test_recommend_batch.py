"""`grec recommend`: top-k lists for many users with Ray Data, the same lists /v1/recommend gives."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from jobs.cli import main

pytestmark = pytest.mark.slow


def test_the_batch_lists_are_the_endpoints(serving_app, client, tmp_path):
    from jobs.predict.recommend import recommend_to_parquet
    from registry.tracking import use_tracking_uri

    users = [serving_app.known_user, *serving_app.prepared.read_split("train", columns=["user_id"])
             .column(0).unique().to_pylist()[:3]]
    users = list(dict.fromkeys(users))
    out = tmp_path / "lists.parquet"
    with use_tracking_uri(serving_app.tracking_uri):
        summary = recommend_to_parquet(f"models:/{serving_app.model_name}@champion", users, serving_app.online_store,
                                       out, task="like", k=5, tracking_uri=serving_app.tracking_uri)
    table = pq.read_table(out)
    assert table.column_names == ["user_id", "rank", "item_id", "score", "task"]
    assert summary.rows == table.num_rows == 5 * len(users) and not list(tmp_path.glob(".*partial"))
    rows = table.to_pylist()
    for user in users:
        mine = sorted((r for r in rows if r["user_id"] == user), key=lambda r: r["rank"])
        served = client.post("/v1/recommend", json={"user_id": user, "task": "like", "k": 5}).json()
        assert [r["item_id"] for r in mine] == [item["item_id"] for item in served["items"]]
        # Same items in the same order; scores agree to float32 precision (the batch job scores users in
        # other batch shapes than one request, so the last bits of a sum can differ).
        assert [r["score"] for r in mine] == pytest.approx([item["rank_score"] for item in served["items"]], rel=1e-5)


def test_bad_requests_are_refused_before_ray(serving_app, tmp_path, capsys):
    base = ["recommend", "--model", f"models:/{serving_app.model_name}@champion", "--tracking-uri",
            serving_app.tracking_uri, "--online-store", serving_app.online_store, "--users", "1"]
    assert main([*base, "--task", "no_such_task", "--out", str(tmp_path / "x.parquet")]) == 2
    assert "--task 'no_such_task': expected one of" in capsys.readouterr().err
    assert main([*base, "--task", "like", "--out", str(tmp_path / "x.csv")]) == 2
    assert "--out must name a .parquet file" in capsys.readouterr().err
