"""No train/serve skew: the endpoint scores a row exactly as the offline batch path does."""

from __future__ import annotations

import httpx
import pytest

from feature_store.online import SEQUENCES_VIEW, open_online_store

pytestmark = pytest.mark.slow

TASKS = ("like", "rating")


def test_endpoint_score_equals_offline_prediction(serving_app):
    from registry.models import load_registered
    from registry.tracking import use_tracking_uri

    test_rows = serving_app.prepared.read_split("test")
    # Rows of users other than the one the API tests use, with a behavior history.
    picked = [i for i, (user, history) in enumerate(zip(test_rows.column("user_id").to_pylist(),
                                                        test_rows.column("hist_item_id").to_pylist(), strict=True))
              if history and user != serving_app.known_user][:4]
    rows = test_rows.take(picked)

    served: dict[tuple[int, str], float] = {}
    version = None
    with open_online_store(serving_app.online_store) as online, httpx.Client(
            base_url=serving_app.base_url, timeout=60, headers={"Authorization": f"Bearer {serving_app.token}"}) as client:
        for index, row in enumerate(rows.to_pylist()):
            user = row["user_id"]
            # The online store holds the user's latest history; give it this row's, so that every feature
            # value is the row's (MovieLens user and item features are static: those already are).
            saved = online.read(SEQUENCES_VIEW, [user]).rows[0]
            online.write(SEQUENCES_VIEW, {user: {"hist_item_id": row["hist_item_id"]}})
            try:
                response = client.post("/v1/score", json={"rows": [
                    {"user_id": user, "item_id": row["item_id"], "task": task} for task in TASKS]})
            finally:
                online.write(SEQUENCES_VIEW, {user: saved})
            assert response.status_code == 200, response.text
            body = response.json()
            version = version or body["model"]["version"]
            assert body["model"]["version"] == version
            for score in body["scores"]:
                served[(index, score["task"])] = score["score"]

    # Offline: the training-set rows -> the version's own transforms -> model.predict.
    with use_tracking_uri(serving_app.tracking_uri):
        loaded = load_registered(f"models:/{serving_app.model_name}/{version}")
    predicted = loaded.model.predict(loaded.model.collate(loaded.transforms.transform(rows)), list(TASKS))
    offline = {(i, task): float(predicted[task][i]) for i in range(rows.num_rows) for task in TASKS}
    assert served.keys() == offline.keys()
    for key, value in offline.items():
        assert served[key] == pytest.approx(value, abs=1e-5), key
