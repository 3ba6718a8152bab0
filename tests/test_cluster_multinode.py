"""grec on a real two-node Ray cluster whose nodes run a Python environment without grec, with
object storage on a real S3-compatible server (moto), all on loopback, as an operator runs it:

    grec data prepare --out s3://...      (prepared locally, uploaded through a staging prefix)
    grec train --address HEAD             (dataset and checkpoints in the bucket, the code shipped)
    grec evaluate --address HEAD --data s3://... --out s3://...

The head has no CPUs, so every training worker and data task runs on the second node, whose
interpreter cannot import grec: only the job's runtime environment brings the code there. Token auth
is on; each node has its own credentials, as cluster nodes do."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import sysconfig
import threading
import time
import venv
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow

BUCKET = "grec-cluster"
WORKER_NODE_CPUS = 2
# Lines a user's terminal must not show (Ray Train's per-report and per-checkpoint INFO lines).
NOISE = ("Reporting training result", "Checkpoint successfully created", "Progress bars disabled",
         "all_gather_into_tensor")


@pytest.fixture(scope="module")
def python_without_grec(tmp_path_factory) -> Path:
    """A virtual environment that reuses this one's packages through a .pth line listing its
    site-packages directory: Python adds that directory but does not read the .pth files in it, so
    grec's editable install (a .pth file there) is not on its path. Nothing else differs."""
    root = tmp_path_factory.mktemp("python-without-grec")
    venv.EnvBuilder(with_pip=False).create(root)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    (site / "packages_of_the_test_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root / "bin" / "python"


def _clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_", "GREC_"))
            and k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**keep, **extra}


@pytest.fixture(scope="module")
def cluster(python_without_grec, s3_server, tmp_path_factory):
    """(address, token file, the cluster's process): a head without CPUs and one worker node."""
    work = tmp_path_factory.mktemp("cluster")
    token = work / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = _clean_env(**s3_server.env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                     RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # Ray's single-host mode: nodes on 127.0.0.1
                     PATH=f"{python_without_grec.parent}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}"
                          f"{os.environ['PATH']}",
                     TORCH_EXTENSIONS_DIR=os.environ["TORCH_EXTENSIONS_DIR"], DS_ACCELERATOR="cpu",
                     HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    process = subprocess.Popen([str(python_without_grec), str(REPO_ROOT / "tests" / "ray_test_cluster.py"),
                                str(WORKER_NODE_CPUS)], env=env, cwd=work, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if not line:
            pytest.fail("the test cluster did not start")
        yield json.loads(line)["address"], token, process
    finally:
        process.stdin.close()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()


@pytest.fixture(scope="module")
def operator(cluster, s3_server, tmp_path_factory):
    """Runs `grec ...` as an operator's shell would, against the cluster and the bucket."""
    address, token, _ = cluster
    bucket = s3_server.create_bucket(BUCKET)
    work = tmp_path_factory.mktemp("operator")
    env = _clean_env(**s3_server.env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
                     GREC_ARTIFACT_ROOT=f"{bucket}/mlflow", MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
                     TORCH_EXTENSIONS_DIR=os.environ["TORCH_EXTENSIONS_DIR"], DS_ACCELERATOR="cpu",
                     HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    grec = str(Path(sys.executable).parent / "grec")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([grec, *args], env=env, cwd=work, capture_output=True, text=True, timeout=540)

    return address, bucket, work, run


def _keys(s3_server, prefix: str) -> list[str]:
    import boto3

    env = s3_server.env
    client = boto3.client("s3", endpoint_url=s3_server.endpoint, region_name=env["AWS_DEFAULT_REGION"],
                          aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


class TrainWorkerWatch:
    """Records the training worker processes of the cluster while a command runs."""

    def __init__(self, cluster_pid: int) -> None:
        self.cluster_pid, self.seen, self._stop = cluster_pid, {}, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.3):
            for process in psutil.Process(self.cluster_pid).children(recursive=True):
                try:
                    if "TrainWorker" in process.name() and process.pid not in self.seen:
                        self.seen[process.pid] = process.parent().cmdline()  # its raylet's
                except psutil.Error:
                    continue

    def __enter__(self) -> TrainWorkerWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def trained(operator, cluster):
    address, bucket, work, run = operator
    data = f"{bucket}/datasets/ml-tiny"
    prepared = run("data", "prepare", "--dataset", "movielens-100k", "--out", data, "--max-events", "400",
                   "--sequence-length", "8")
    assert prepared.returncode == 0, prepared.stderr
    config = yaml.safe_load((REPO_ROOT / "configs" / "tiny_test.yaml").read_text())
    config["dataset"]["path"] = data
    config["scaling"].update(storage_path=f"{bucket}/ray_results", num_workers=1)
    (work / "train.yaml").write_text(yaml.safe_dump(config))
    with TrainWorkerWatch(cluster[2].pid) as workers:
        result = run("train", "--config", str(work / "train.yaml"), "--address", address, "--epochs", "1",
                     "--no-progress")
    return data, result, workers.seen


def test_python_without_grec_cannot_import_it_but_has_the_rest(python_without_grec, tmp_path):
    probe = ("import importlib.util as u, sys; "
             "print([m for m in ('grec', 'jobs', 'feature_store', 'ray', 'torch', 'deepspeed') if u.find_spec(m)])")
    out = subprocess.run([str(python_without_grec), "-c", probe], cwd=tmp_path, env=_clean_env(),
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['ray', 'torch', 'deepspeed']"


def test_the_worker_setup_hook_runs_without_grec(python_without_grec, tmp_path):
    """The hook travels by value: a process without grec unpickles and runs it."""
    import logging

    import ray.cloudpickle

    from jobs.ray_runtime import setup_hook

    payload = ray.cloudpickle.dumps(setup_hook({"ray.train.x": logging.ERROR}, {"train/y.py": logging.WARNING}))
    check = ("import logging, os, sys, ray, ray.cloudpickle as p; p.loads(sys.stdin.buffer.read())(); "
             "print(logging.getLogger('ray.train.x').level, "
             "logging.getLogger(os.path.join(os.path.dirname(ray.__file__), 'train/y.py')).level)")
    out = subprocess.run([str(python_without_grec), "-c", check], input=payload, cwd=tmp_path, env=_clean_env(),
                         capture_output=True, check=True).stdout
    assert out.decode().split() == [str(logging.ERROR), str(logging.WARNING)]


def test_training_runs_on_a_node_without_grec(trained, python_without_grec, s3_server):
    _, result, workers = trained
    assert result.returncode == 0, result.stderr[-3000:]
    assert "registered grec-tiny version 1 as challenger" in result.stdout
    assert workers, "no training worker process was seen on the cluster"
    for raylet in workers.values():
        # A worker's own command line is its title (ray::RayTrainWorker...); the raylet that
        # started it names the interpreter it starts workers with.
        assert raylet[0].endswith("raylet")
        assert any(str(python_without_grec) in arg for arg in raylet), raylet
    terminal = result.stdout + result.stderr
    assert not [line for line in terminal.splitlines() if any(noise in line for noise in NOISE)]
    assert "shipping grec, feature_store, recommend, registry, jobs, serving to the cluster's nodes" in result.stderr


def test_training_keeps_checkpoints_and_artifacts_in_the_bucket(trained, operator, s3_server):
    from mlflow import MlflowClient

    _, result, _ = trained
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoints = _keys(s3_server, "ray_results/")
    assert any(k.endswith("trainer_state.json") for k in checkpoints), checkpoints[:20]
    artifacts = _keys(s3_server, "mlflow/")
    assert any(k.endswith("/MLmodel") for k in artifacts), artifacts[:20]
    assert any(k.endswith("plots/loss_curves.png") for k in artifacts), artifacts[:20]
    client = MlflowClient(tracking_uri=f"sqlite:///{operator[2] / 'mlflow.db'}")
    version = client.get_model_version_by_alias("grec-tiny", "challenger")
    assert [m.value for m in client.get_metric_history(version.run_id, "train/restarts")] == [0]


def test_evaluation_reads_the_bucket_and_writes_its_report_there(trained, operator, s3_server):
    data, result, _ = trained
    assert result.returncode == 0, result.stderr[-3000:]
    address, bucket, _, run = operator
    report = f"{bucket}/reports/grec-tiny"
    evaluated = run("evaluate", "--model", "models:/grec-tiny@challenger", "--data", data, "--out", report,
                    "--address", address, "--resamples", "0", "--ranking-users", "0")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    # published as a new version of the report folder, the pointer switched to it
    shown = re.search(rf"^report: {re.escape(report)}/versions/[^/\s]+/report\.md$", evaluated.stdout, re.MULTILINE)
    assert shown, evaluated.stdout
    keys = _keys(s3_server, "reports/")
    assert "reports/grec-tiny/current.json" in keys
    assert shown.group(0).removeprefix(f"report: {bucket}/") in keys


def test_a_cluster_run_without_shared_storage_is_refused_before_any_work(operator, trained):
    address, _, work, run = operator
    config = yaml.safe_load((work / "train.yaml").read_text())
    del config["scaling"]["storage_path"]
    (work / "no_storage.yaml").write_text(yaml.safe_dump(config))
    started = time.monotonic()
    refused = run("train", "--config", str(work / "no_storage.yaml"), "--address", address)
    assert refused.returncode == 2
    assert f"scaling.storage_path: a run on the Ray cluster at {address} needs checkpoint storage" in refused.stderr
    assert "joining the Ray cluster" not in refused.stderr and time.monotonic() - started < 120
