"""MLflow for grec's jobs: where runs and models are stored, and logging from rank 0 only.

Default store: a SQLite file under the working directory's `.grec/` folder (artifacts next to it),
so a laptop needs no server; `--tracking-uri` (or $MLFLOW_TRACKING_URI) points at a server.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import mlflow
import mlflow.tracking._model_registry.utils as _registry_state
import mlflow.tracking._tracking_service.utils as _tracking_state
from mlflow import MlflowClient

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
REGISTRY_URI_ENV = "MLFLOW_REGISTRY_URI"
GREC_DIR = ".grec"
DATABASE_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# Where new experiments keep their artifacts (models, plots, reports), e.g. s3://BUCKET/mlflow.
ARTIFACT_ROOT_ENV = "GREC_ARTIFACT_ROOT"
# MLflow caps a parameter value at 6000 characters; longer ones are truncated with a marker.
MAX_PARAM_CHARS = 6000
# MLflow announces at INFO every SQLite store it opens for the first time in a process ("Creating
# initial MLflow database tables...", "Updating database tables"): routine for grec's default store.
logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)


def default_tracking_uri(workdir: str | Path | None = None) -> str:
    """`sqlite:///<workdir>/.grec/mlflow.db` (the folder is created)."""
    folder = Path(workdir or Path.cwd()).resolve() / GREC_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / DATABASE_FILE}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """The URI given, else $MLFLOW_TRACKING_URI, else the default SQLite store."""
    return tracking_uri or os.environ.get(TRACKING_URI_ENV) or default_tracking_uri()


def is_local_sqlite(tracking_uri: str) -> bool:
    return tracking_uri.startswith("sqlite:///")


@contextmanager
def use_tracking_uri(tracking_uri: str | None = None) -> Iterator[str]:
    """Points MLflow's tracking and registry at the resolved URI for the block (also in processes
    started inside it, Ray's included, through $MLFLOW_TRACKING_URI and $MLFLOW_REGISTRY_URI); yields
    the URI. On exit, also when the block raises, MLflow's URIs and both variables are what they were
    before: a caller after the block (or a test after another) gets no store it did not name."""
    resolved = resolve_tracking_uri(tracking_uri)
    previous_environment = {name: os.environ.get(name) for name in (TRACKING_URI_ENV, REGISTRY_URI_ENV)}
    # MLflow's setters are public but its getters resolve (a set URI, else the variable, else a
    # default): only the module attributes tell "set" from "unset", and restoring "unset" keeps
    # MLflow following the variables as it did before the block.
    previous_tracking, previous_registry = _tracking_state._tracking_uri, _registry_state._registry_uri
    os.environ[TRACKING_URI_ENV] = os.environ[REGISTRY_URI_ENV] = resolved
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    try:
        yield resolved
    finally:
        mlflow.set_tracking_uri(previous_tracking)
        mlflow.set_registry_uri(previous_registry)
        for name, value in previous_environment.items():  # after the setters, which write the variables
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def named_tracking_uri(tracking_uri: str | None) -> AbstractContextManager:
    """`use_tracking_uri(tracking_uri)` when a URI is named; else MLflow's current store, untouched
    (a library call without a URI follows its caller's block)."""
    return use_tracking_uri(tracking_uri) if tracking_uri else nullcontext()


def ensure_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment `name`, created if missing. Its artifacts go to `$GREC_ARTIFACT_ROOT/NAME`
    when that is set (e.g. s3://BUCKET/mlflow, written with boto3 and the standard AWS variables);
    else, with the local SQLite store, to `mlartifacts/` beside the database instead of MLflow's
    default under the working directory; else where the tracking server puts them."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if os.environ.get(ARTIFACT_ROOT_ENV):
        location = f"{os.environ[ARTIFACT_ROOT_ENV].rstrip('/')}/{name}"
    elif is_local_sqlite(tracking_uri):
        database = Path(tracking_uri.removeprefix("sqlite:///"))
        location = (database.parent / ARTIFACTS_DIR / name).resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b.c": "value"} (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            text = str(value)
            flat[name] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return flat


class RankZeroLogger:
    """Logs to one MLflow run from the rank-0 worker only; on every other rank each call does
    nothing, so worker code calls it unconditionally."""

    def __init__(self, tracking_uri: str, run_id: str, rank: int) -> None:
        self.run_id = run_id
        self.enabled = rank == 0
        self.client = MlflowClient(tracking_uri=tracking_uri) if self.enabled else None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled or not metrics:
            return
        self.client.log_batch(self.run_id, metrics=[
            mlflow.entities.Metric(key=_metric_key(k), value=float(v), timestamp=_now_ms(), step=step)
            for k, v in metrics.items()])


def _metric_key(name: str) -> str:
    # MLflow keys allow letters, digits, _ - . space / ; other characters become "_".
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in name)


def _now_ms() -> int:
    return int(time.time() * 1000)
