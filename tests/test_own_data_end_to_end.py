"""A team's own data from Parquet files to a served recommendation, through the commands README.md
("Your own data") shows and nothing else: declare the files (the team's YAML), `grec data prepare
--definition`, `grec data materialize`, `grec train` (one epoch) into a temporary MLflow registry,
`grec build-index`, `grec evaluate --promote`, then a real POST /v1/recommend to the promoted
version, served as an application of the session's Serve.

The dataset (tests/own_data.py): Parquet events partitioned by day with string ids, items with a
text title and a list column of tags, two tasks from conditions (`clicked == 1`, `dwell_s > 30 and
clicked == 1`); and its implicit top-N twin (every event a positive), which training scores against
sampled negatives (grec/negatives.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import REPO_ROOT
from own_data import write_shop

from feature_store.online import open_online_store, read_seen
from feature_store.prepare import open_prepared
from jobs.cli import main

pytestmark = pytest.mark.slow

# The team's training config: the tiny test model (configs/tiny_test.yaml) with a tiny text encoder
# (MiniLM's cost is the text tests' business), one epoch.
TINY_TEXT = {"backbone": "tiny_bert", "tiny_hidden": 16, "tiny_layers": 1, "tiny_heads": 2, "tiny_intermediate": 16}


@dataclass(frozen=True)
class Case:
    name: str  # registered model and Serve application
    implicit: bool
    task: str  # the task recommendations are ranked by


CASES = [
    Case("grec-own-shop", implicit=False, task="click"),
    Case("grec-own-views", implicit=True, task="view"),
]


def _grec(*argv: str) -> None:
    code = main(list(argv))
    assert code == 0, f"grec {' '.join(argv)} exited with {code}"


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_own_parquet_files_to_a_served_recommendation(case, tmp_path, serving_app, monkeypatch, capsys):
    from ray import serve

    from serving.app import build_app

    monkeypatch.chdir(tmp_path)  # default outputs (.grec/) stay in the test's folder
    declaration = write_shop(tmp_path / "raw", implicit=case.implicit)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    online = str(tmp_path / "online.sqlite")
    # Absolute: the session's Ray workers did not start in this folder.
    data = str(tmp_path / "data")

    _grec("data", "prepare", "--definition", str(declaration), "--out", data)
    _grec("data", "materialize", "--data", data, "--online-store", online)
    config = yaml.safe_load((REPO_ROOT / "configs" / "tiny_test.yaml").read_text())
    config["dataset"]["path"] = data
    config["model"]["text"] = TINY_TEXT
    config["training"].update(epochs=1, early_stopping={"metric": f"val/{case.task}/auc", "mode": "max"})
    config["scaling"]["storage_path"] = str(tmp_path / "ray_results")
    config["mlflow"] = {"experiment": case.name, "registered_model": case.name}
    Path("train.yaml").write_text(yaml.safe_dump(config))
    _grec("train", "--config", "train.yaml", "--tracking-uri", tracking, "--no-progress")
    _grec("build-index", "--model", f"models:/{case.name}@challenger", "--data", data, "--max-epochs", "3",
          "--candidates-per-source", "20", "--tracking-uri", tracking)
    _grec("evaluate", "--model", f"models:/{case.name}@challenger", "--data", data, "--out", "report",
          "--resamples", "20", "--ranking-users", "20", "--negatives", "19", "--recommend-users", "30",
          "--peers", "popularity", "ease", "--peer-trials", "2", "--tracking-uri", tracking, "--promote")
    printed = capsys.readouterr().out
    assert "PROMOTED: challenger version 1" in printed and f"top-N lists on test" in printed
    assert (tmp_path / "report" / "report.md").exists()

    app = f"app-{case.name}"
    config = serving_app.config.model_copy(update={"model_uri": f"models:/{case.name}@champion",
                                                   "tracking_uri": tracking, "online_store": online})
    serve.run(build_app(config), name=app, route_prefix=f"/{case.name}")
    try:
        prepared = open_prepared(data)
        user = prepared.read_split("train", columns=["user_id"]).column("user_id")[0].as_py()
        with httpx.Client(base_url=f"{serving_app.base_url}/{case.name}", timeout=60,
                          headers={"Authorization": f"Bearer {serving_app.token}"}) as client:
            response = client.post("/v1/recommend", json={"user_id": user, "task": case.task, "k": 5})
        assert response.status_code == 200, response.text
        body = response.json()
    finally:
        serve.delete(app)
    assert body["candidates_from"] == "retrieval" and body["cold_start"] is False
    items = [item["item_id"] for item in body["items"]]
    assert len(items) == 5 and all(isinstance(item, str) and item.startswith("SKU") for item in items)
    with open_online_store(online) as store:
        assert not set(items) & set(read_seen(store, user))  # nothing the visitor already saw
