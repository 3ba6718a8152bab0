"""infra/serve/grec_serve.yaml started for real: `serve run` of the file (its args pointed at the test
session's registry and online store) on the session's Ray, through the application builder
`serving.builder:app`; the endpoint answers with the bearer token from the variable the file names."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

APP = "grec-infra"
ROUTE = "/infra"


def _ready(url: str) -> bool:
    """/readyz answers 200 (its replicas may still be starting: no answer yet is not an answer)."""
    try:
        return httpx.get(url, timeout=10).status_code == 200
    except httpx.HTTPError:
        return False


def test_serve_run_starts_the_infra_serve_config(ray_local, serving_app, tmp_path):
    import ray
    from ray import serve

    config = yaml.safe_load((REPO_ROOT / "infra" / "serve" / "grec_serve.yaml").read_text())
    port = int(serving_app.base_url.rsplit(":", 1)[1])
    config["http_options"] = {"host": "127.0.0.1", "port": port}  # the session's Serve proxy, loopback only
    [app] = config["applications"]
    app.update(name=APP, route_prefix=ROUTE)
    app["args"].update(model_uri=f"models:/{serving_app.model_name}@champion", tracking_uri=serving_app.tracking_uri,
                       online_store=serving_app.online_store, token_env="GREC_INFRA_TEST_TOKEN",
                       ingress={"num_cpus": 0.1}, scorer={"num_cpus": 0.1})
    # The builder runs in the cluster and reads the token there (a Kubernetes Secret in the pod's
    # environment on KubeRay); here the application's runtime environment plays that part.
    app["runtime_env"] = {"env_vars": {"GREC_INFRA_TEST_TOKEN": "infra-token"}}
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")  # join the session's Ray on loopback
    serve_cli = str(Path(sys.executable).parent / "serve")
    started = subprocess.run([serve_cli, "run", "--non-blocking", "--address", ray.get_runtime_context().gcs_address,
                              str(path)], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        base = f"http://127.0.0.1:{port}{ROUTE}"
        deadline = time.monotonic() + 180
        while not _ready(f"{base}/readyz"):
            assert time.monotonic() < deadline, "the application from the config file never became ready"
            time.sleep(1)
        assert httpx.get(f"{base}/v1/tasks", timeout=10).status_code == 401
        tasks = httpx.get(f"{base}/v1/tasks", headers={"Authorization": "Bearer infra-token"}, timeout=10)
        assert tasks.status_code == 200 and tasks.json()
    finally:
        serve.delete(APP)
