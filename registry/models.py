"""The MLflow model registry for grec: log a trained model as a pyfunc model, register it, move the
`challenger` / `champion` aliases, and load a registered model back (`models:/NAME@alias` or
`models:/NAME/VERSION`).

The logged model holds safetensors weights + JSON config (grec.save_model), the fitted transforms,
the dataset spec and definition, the source of `grec` and `feature_store` (so a model version runs
the code it was trained with), explicit pip requirements and a signature.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from contextlib import redirect_stderr
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from registry.tracking import ensure_experiment

CHALLENGER = "challenger"
CHAMPION = "champion"
MODEL_ARTIFACT_PATH = "model"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
# What a registered model needs at inference; versions are pinned to this environment's.
REQUIRED_DISTRIBUTIONS = ("torch", "torchrec", "fbgemm-gpu-cpu", "transformers", "safetensors", "tokenizers",
                          "pyarrow", "pandas", "numpy", "mlflow")
# MLflow draws a "Downloading artifacts" bar for every model it loads or logs (in jobs, Ray Data
# actors and serving replicas alike): its own switch turns them off, unless the user set it.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


@dataclass(frozen=True)
class RegisteredModel:
    """A registered model version, loaded: the grec network, its transforms, spec and definition."""

    name: str
    version: str
    uri: str
    model: Any  # grec.MultiTaskModel, eval mode
    transforms: Any  # feature_store.transforms.TransformSet
    spec: Any  # grec.InputSpec
    definition: Any  # feature_store.definitions.DatasetDefinition
    pyfunc: Any  # the mlflow.pyfunc.PyFuncModel wrapping them


def pip_requirements() -> list[str]:
    """Pinned requirements of the installed versions (local tags such as `+cpu` dropped)."""
    pins = []
    for name in REQUIRED_DISTRIBUTIONS:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def feature_columns(spec: Any) -> list[str]:
    """The raw columns a model reads (no labels, no timestamp): its signature's inputs."""
    return [f.name for group in (spec.categorical, spec.numeric, spec.sequences, spec.text) for f in group]


def model_signature(example_rows: pd.DataFrame, spec: Any):
    """Input: the model's raw feature columns (types from `example_rows`); output: one score_<task>
    column per task; param: `tasks` (a subset to score)."""
    from mlflow.models import infer_signature

    from registry.pyfunc_model import SCORE_PREFIX

    inputs = example_rows[feature_columns(spec)]
    output = pd.DataFrame({f"{SCORE_PREFIX}{t.name}": [0.0] * len(inputs) for t in spec.tasks})
    with warnings.catch_warnings():
        # MLflow hints at every integer column that a missing value would fail its schema check; the
        # columns' types are the dataset's declared ones (an integer id or count is never missing),
        # so the hint asks nothing of the user.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column", category=UserWarning)
        return infer_signature(inputs, output, params={"tasks": [t.name for t in spec.tasks]})


def log_model(model: Any, dataset_dir: str | Path, example_rows: pd.DataFrame | None, *,
              signature: Any = None) -> Any:
    """Logs `model` (a grec model) as a pyfunc model into the active run. Returns MLflow's
    ModelInfo. The signature comes from `example_rows`, or is `signature` (e.g. the version a
    quantized model was made from)."""
    import feature_store
    import grec
    from grec import save_model

    dataset_dir = Path(dataset_dir)
    with tempfile.TemporaryDirectory() as tmp:
        weights = save_model(model, Path(tmp) / "grec_model")
        artifacts = {"model": str(weights), "transforms": str(dataset_dir / "transforms.json"),
                     "dataset_spec": str(dataset_dir / "dataset_spec.json"),
                     "definition": str(dataset_dir / "definition.json")}
        signature = signature or model_signature(example_rows, model.config.input)
        with warnings.catch_warnings():
            # The signature is given, so MLflow needs no input example; an example would make it
            # load and run the model once more at every logging.
            warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
            return mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_PATH, python_model=str(PYFUNC_CODE), artifacts=artifacts,
                code_paths=[str(Path(grec.__file__).parent), str(Path(feature_store.__file__).parent)],
                pip_requirements=pip_requirements(), signature=signature,
            )


def register_model(model: Any, dataset_dir: str | Path, name: str, example_rows: pd.DataFrame | None, *,
                   run_id: str | None = None, alias: str | None = CHALLENGER,
                   client: MlflowClient | None = None, signature: Any = None) -> ModelVersion:
    """Logs `model` into run `run_id` (a new run when None), registers it under `name` and points
    `alias` at the new version. Uses MLflow's current tracking URI."""
    client = client or MlflowClient()
    # A new run goes to the experiment named after the model: MLflow's default experiment would put
    # a local SQLite store's artifacts under ./mlruns of whatever directory the caller runs in.
    experiment_id = None if run_id else ensure_experiment(client, name, mlflow.get_tracking_uri())
    with mlflow.start_run(run_id=run_id, experiment_id=experiment_id, nested=mlflow.active_run() is not None):
        info = log_model(model, dataset_dir, example_rows, signature=signature)
    # MLflow prints "Successfully registered model ..." and "Created version ..." to stderr; grec's
    # commands say what they registered (an error still raises).
    with redirect_stderr(io.StringIO()):
        registered = mlflow.register_model(info.model_uri, name)
    version = client.get_model_version(name, str(registered.version))
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    return version


def set_alias(name: str, alias: str, version: str | int, client: MlflowClient | None = None) -> None:
    (client or MlflowClient()).set_registered_model_alias(name, alias, str(version))


def resolve_version(uri: str, client: MlflowClient | None = None) -> tuple[str, str]:
    """(name, version) that `models:/NAME@alias` or `models:/NAME/VERSION` names now."""
    if not uri.startswith("models:/"):
        raise ValueError(f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    rest = uri.removeprefix("models:/")
    client = client or MlflowClient()
    if "@" in rest:
        name, alias = rest.split("@", 1)
        try:
            return name, str(client.get_model_version_by_alias(name, alias).version)
        except mlflow.exceptions.MlflowException as err:
            raise ValueError(f"{uri}: no version of {name!r} has alias {alias!r}") from err
    name, _, version = rest.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, version


def load_registered(uri: str) -> RegisteredModel:
    """Loads a registered version (the alias resolved first, so the version returned is the one
    loaded)."""
    name, version = resolve_version(uri)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    python_model = pyfunc.unwrap_python_model()
    return RegisteredModel(name=name, version=version, uri=uri, model=python_model.model,
                           transforms=python_model.transforms, spec=python_model.spec,
                           definition=python_model.definition, pyfunc=pyfunc)
