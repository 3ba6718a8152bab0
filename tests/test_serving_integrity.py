"""The alias moves to versions whose files were changed after registration (a code file, the weights,
the transforms, the retrieval index): the endpoint keeps answering with the version it holds, says which
version it refused and why, runs nothing from the artifact store, and takes the next good version."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient

from conftest import (ServedAnswer, flip_last_byte, registry_local_path, serving_keep_requesting, serving_register,
                      serving_serve_again, serving_train_tiny_model, serving_wait_everywhere)
from registry.retrieval_index import fetch_retrieval_index, log_retrieval_index
from registry.tracking import use_tracking_uri

pytestmark = pytest.mark.slow

# What each tampering is refused for: the file and the check that fails.
EXPECTED = {
    "code": ("size_mismatch", "MLmodel"),
    "weights": ("digest_mismatch", "data/grec/model/model.safetensors has sha256"),
    "transforms": ("size_mismatch", "data/grec/transforms.json is"),
    "index": ("digest_mismatch", "the retrieval index of model"),
}


def _tamper(kind: str, files: Path, index: Path | None, marker: Path) -> None:
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    if kind == "code":  # a loader that runs an added code file, as an attacker would point a pyfunc at one
        (files / "python_model.py").write_text(code)
        (files / "code/grec").mkdir(parents=True)
        (files / "code/grec/__init__.py").write_text(code)
        mlmodel = files / "MLmodel"
        mlmodel.write_text(mlmodel.read_text().replace("loader_module: registry.pyfunc_model",
                                                       "python_model: python_model.py"))
    elif kind == "weights":
        flip_last_byte(files / "data/grec/model/model.safetensors")
    elif kind == "transforms":
        transforms = files / "data/grec/transforms.json"
        transforms.write_text(transforms.read_text() + "\n")
    else:
        flip_last_byte(index / "next_item.safetensors")


def test_an_alias_moved_to_tampered_versions_keeps_the_served_one_until_a_good_one(serving_app, tmp_path):
    app = serving_app
    client = MlflowClient(tracking_uri=app.tracking_uri)
    before = str(client.get_model_version_by_alias(app.model_name, "champion").version)
    model = serving_train_tiny_model(app.prepared, seed=2, steps=2)
    versions = {kind: serving_register(model, app.prepared, app.model_name, app.tracking_uri, alias=None)
                for kind in EXPECTED}
    good = serving_register(model, app.prepared, app.model_name, app.tracking_uri, alias=None)
    marker = tmp_path / "marker"
    with use_tracking_uri(app.tracking_uri), tempfile.TemporaryDirectory() as tmp:
        # The index case gets a copy of the served version's index, logged as its own.
        index_uri = log_retrieval_index(app.model_name, versions["index"],
                                        fetch_retrieval_index(app.model_name, before, tmp, client=client), client)
        for kind, version in versions.items():
            _tamper(kind, registry_local_path(client.get_model_version_download_uri(app.model_name, version)),
                    registry_local_path(index_uri), marker)

    async def scenario() -> tuple[list[ServedAnswer], dict[str, dict], dict, float, float]:
        stop = asyncio.Event()
        load = asyncio.create_task(serving_keep_requesting(app, stop))
        refused = {}
        try:
            async with httpx.AsyncClient(base_url=app.base_url,
                                         headers={"Authorization": f"Bearer {app.token}"}) as probe:
                for kind, version in versions.items():
                    client.set_registered_model_alias(app.model_name, "champion", version)
                    refused[kind], _ = await serving_wait_everywhere(
                        probe, lambda m, v=version: (m["refused"] or {}).get("version") == v,
                        f"the refusal of version {version} ({kind})")
                moved = time.monotonic()
                client.set_registered_model_alias(app.model_name, "champion", good)
                after, swapped = await serving_wait_everywhere(probe, lambda m: m["version"] == good,
                                                               f"good version {good} served")
                await asyncio.sleep(1.0)  # requests keep flowing on it
        finally:
            stop.set()
        return await load, refused, after, moved, swapped

    try:
        answers, refused, after, moved, swapped = asyncio.run(scenario())
    finally:  # the session's endpoint serves the version it served before, for the tests after this one
        serving_serve_again(app, before)
    assert answers and all(a.status == 200 for a in answers), [a for a in answers if a.status != 200][:5]
    assert {a.version for a in answers} <= {before, good}, {a.version for a in answers}  # no tampered one
    # the held version until the alias named a good one, the good one once every replica had it
    assert {a.version for a in answers if a.sent_at < moved} == {before}
    assert {a.version for a in answers if a.sent_at > swapped} == {good}
    for kind, model in refused.items():
        reason, mentions = EXPECTED[kind]
        assert model["version"] == before, (kind, model)
        assert model["refused"]["reason"] == reason, (kind, model["refused"])
        message = model["refused"]["message"]
        assert mentions in message and f"version {versions[kind]}" in message, message
        assert "Traceback" not in message and "expected" in message
    assert after["refused"] is None
    assert not marker.exists()
    deadline = time.monotonic() + 30
    while True:  # Ray reports metrics every second in tests
        text = httpx.get(f"{app.base_url}/metrics").text
        expected = [f'ray_grec_model_versions_refused_total{{reason="{EXPECTED[kind][0]}",version="{version}"}}'
                    for kind, version in versions.items()]
        if all(line in text for line in expected) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(line in text for line in expected), [line for line in expected if line not in text]


def test_a_scorer_replaced_while_the_alias_names_a_refused_version_serves_the_held_one(serving_app):
    import ray

    app = serving_app
    client = MlflowClient(tracking_uri=app.tracking_uri)
    before = str(client.get_model_version_by_alias(app.model_name, "champion").version)
    version = serving_register(serving_train_tiny_model(app.prepared, seed=3, steps=1), app.prepared, app.model_name,
                               app.tracking_uri, alias=None)
    with use_tracking_uri(app.tracking_uri):
        flip_last_byte(registry_local_path(client.get_model_version_download_uri(app.model_name, version))
                       / "data/grec/model/model.safetensors")
    headers = {"Authorization": f"Bearer {app.token}"}
    payload = {"user_id": app.known_user, "task": "like", "candidates": app.known_items[:20], "k": 3}
    client.set_registered_model_alias(app.model_name, "champion", version)
    try:
        with httpx.Client(base_url=app.base_url, headers=headers, timeout=30) as http:
            deadline = time.monotonic() + 120
            while (http.get("/v1/model").json()["refused"] or {}).get("version") != version:
                assert time.monotonic() < deadline, "the tampered version was never refused"
                time.sleep(0.25)
            # Its replacement starts while the registry names the refused version: it must start anyway.
            [replica] = [a for a in ray.util.list_named_actors(all_namespaces=True)
                         if a["name"].startswith("SERVE_REPLICA::grec-test#Scorer#")]
            ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
            deadline = time.monotonic() + 120
            while True:
                response = http.post("/v1/recommend", json=payload)
                if response.status_code == 200 and http.get("/readyz").status_code == 200:
                    break
                assert response.status_code == 503, response.text
                assert time.monotonic() < deadline, "the replacement scorer never took over"
                time.sleep(0.2)
            assert response.json()["model"]["version"] == before
    finally:
        serving_serve_again(app, before)
