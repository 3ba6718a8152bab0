"""The MLflow model registry for grec: log a trained model, register it, move the `challenger` /
`champion` aliases, and load a registered version back (`models:/NAME@alias` or `models:/NAME/VERSION`).

A version's files are data: safetensors weights + JSON config (grec.save_model), the fitted
transforms, the dataset spec and definition (registry.layout says where). At registration the
sha256 and size of every file is recorded on the version (tag `grec.manifest`, registry.integrity),
with its layout and the grec that registered it. `load_registered` checks every file against that
manifest and reads them with the installed grec: nothing from the artifact store is imported or
executed. The version is also an MLflow pyfunc model whose loader is the installed
`registry.pyfunc_model` (no code is logged), for MLflow's own tools.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
import warnings
from contextlib import redirect_stderr
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from registry.integrity import (
    Manifest,
    RefusedVersionError,
    check_unverified,
    fetch_verified,
    seal_remedy,
    stored_manifest,
)
from registry.layout import (
    DATA_NAME,
    GREC_VERSION_TAG,
    MLMODEL_FILE,
    Layout,
    grec_version,
    layout_tags,
    read_data,
    version_layout,
    write_data,
)
from registry.tracking import ensure_experiment, named_tracking_uri

CHALLENGER = "challenger"
CHAMPION = "champion"
MODEL_ARTIFACT_PATH = "model"
# The version tag holding the manifest of the version's files (registry.integrity.Manifest).
MANIFEST_TAG = "grec.manifest"
# MLflow imports this module of the installed grec to load a version as a pyfunc (registry/pyfunc_model.py).
PYFUNC_LOADER = "registry.pyfunc_model"
# What a registered model needs at inference; versions are pinned to this environment's.
REQUIRED_DISTRIBUTIONS = ("torch", "torchrec", "fbgemm-gpu-cpu", "transformers", "safetensors", "tokenizers",
                          "pyarrow", "pandas", "numpy", "mlflow")
# MLflow draws a "Downloading artifacts" bar for every model it loads or logs (in jobs, Ray Data
# actors and serving replicas alike): its own switch turns them off, unless the user set it.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

log = logging.getLogger(__name__)


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
    signature: Any  # mlflow.models.ModelSignature: raw feature columns in, score_<task> columns out

    def predict(self, rows: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
        """Raw rows (the training set's columns, labels not needed) -> one `score_<task>` column per
        task (all tasks unless `tasks`), as the version's pyfunc model answers."""
        from registry.pyfunc_model import score_rows

        return score_rows(self.ranker, rows, tasks)

    @cached_property
    def ranker(self) -> Any:
        """The version's recommend.ranker.Ranker (its per-task sub-models exported once)."""
        from recommend.ranker import Ranker

        return Ranker(self.model, self.transforms, self.spec, require_items=False)


@dataclass(frozen=True)
class VersionFiles:
    """Where a version's files are and what they must be: its layout and manifest (None: registered
    before manifests, loaded unchecked where integrity is not required)."""

    name: str
    version: str
    layout: Layout
    manifest: Manifest | None
    uri: str  # the artifact directory of the version's files
    grec_version: str  # of the grec that registered it

    @property
    def what(self) -> str:
        return f"model {self.name} version {self.version}"

    def fetch(self, destination: str | Path) -> Path:
        """The version's files in `destination`, checked against the manifest."""
        return fetch_verified(self.uri, self.manifest, destination, self.what)


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
    """Logs `model` (a grec model) with the dataset's transforms, spec and definition into the active
    run, as a pyfunc model whose loader is the installed `registry.pyfunc_model`. Returns MLflow's
    ModelInfo. The signature comes from `example_rows`, or is `signature` (e.g. the version a
    quantized model was made from)."""
    with tempfile.TemporaryDirectory() as tmp:
        data = write_data(model, dataset_dir, Path(tmp) / DATA_NAME)
        signature = signature or model_signature(example_rows, model.config.input)
        with warnings.catch_warnings():
            # The signature is given, so MLflow needs no input example; an example would make it
            # load and run the model once more at every logging.
            warnings.filterwarnings("ignore", message=".*An input example was not provided", category=UserWarning)
            return mlflow.pyfunc.log_model(name=MODEL_ARTIFACT_PATH, loader_module=PYFUNC_LOADER, data_path=str(data),
                                           pip_requirements=pip_requirements(), signature=signature)


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
    number = str(registered.version)
    # Recorded before any alias names the version, so no reader ever sees it without them.
    tags = {**layout_tags(), MANIFEST_TAG: _manifest_of(client, name, number).to_tag()}
    for key, value in tags.items():
        client.set_model_version_tag(name, number, key, value)
    version = client.get_model_version(name, number)
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


def version_files(name: str, version: str, *, require_integrity: bool | None = None,
                  client: MlflowClient | None = None) -> VersionFiles:
    """What the registry says about a version's files, checked before any is downloaded: a layout this
    grec reads, and a manifest (a version without one is refused when integrity is required, else
    loaded with a warning that says how to give it one)."""
    client = client or MlflowClient()
    tags = client.get_model_version(name, version).tags
    what = f"model {name} version {version}"
    layout = version_layout(tags, what)
    manifest = Manifest.from_tag(tags[MANIFEST_TAG], what) if MANIFEST_TAG in tags else None
    if manifest is None:
        check_unverified(what, seal_remedy(name, version), require_integrity)
    return VersionFiles(name, version, layout, manifest, client.get_model_version_download_uri(name, version),
                        tags.get(GREC_VERSION_TAG, "unknown"))


def load_registered(uri: str, *, require_integrity: bool | None = None,
                    tracking_uri: str | None = None) -> RegisteredModel:
    """Loads a registered version (the alias resolved first, so the version returned is the one
    loaded): every file checked against its manifest, then read as data with the installed grec.
    `require_integrity` (default: $GREC_REQUIRE_INTEGRITY) refuses a version without a manifest.
    `tracking_uri` names the store for this load only (default: MLflow's current one), as a Ray
    worker that may have loaded from another store before needs. Raises RefusedVersionError for a
    version that fails a check."""
    from mlflow.models import Model

    with named_tracking_uri(tracking_uri):
        name, version = resolve_version(uri)
        files = version_files(name, version, require_integrity=require_integrity)
        with tempfile.TemporaryDirectory(prefix="grec-version-") as tmp:
            root = files.fetch(tmp)
            data, signature = _read(files, lambda: (read_data(root / files.layout.data_dir, files.layout.model_dir),
                                                    Model.load(str(root / MLMODEL_FILE)).signature))
    return RegisteredModel(name=name, version=version, uri=uri, model=data.model, transforms=data.transforms,
                           spec=data.spec, definition=data.definition, signature=signature)


def _read(files: VersionFiles, read: Any) -> Any:
    """`read()`, its failure a refusal of the version: checked files this grec cannot parse (a model
    format it does not know, a corrupt file in a version without a manifest) never will be."""
    try:
        return read()
    except Exception as err:  # noqa: BLE001 - whatever the parser raises, the version cannot be loaded
        log.debug("reading %s failed", files.what, exc_info=True)
        raise RefusedVersionError(f"{files.what} (registered by grec {files.grec_version}) cannot be read by this "
                                  f"grec ({grec_version()}): {err}", "unreadable_files") from None


def _manifest_of(client: MlflowClient, name: str, version: str) -> Manifest:
    """The manifest of a version's files as the artifact store holds them now."""
    return stored_manifest(client.get_model_version_download_uri(name, version), f"model {name} version {version}")


@dataclass(frozen=True)
class Sealed:
    """What `seal_version` recorded: the manifests it added (None: the version already had one, or
    has no retrieval index)."""

    name: str
    version: str
    model: Manifest | None
    retrieval_index: Manifest | None


def seal_version(uri: str, client: MlflowClient | None = None) -> Sealed:
    """Records the manifest of a version registered before grec recorded them (and of its retrieval
    index), from its files as they are now: seal only a version whose artifact store you trust. A
    manifest already recorded is never replaced."""
    from registry.retrieval_index import seal_retrieval_index

    client = client or MlflowClient()
    name, version = resolve_version(uri, client)
    model = None
    if MANIFEST_TAG not in client.get_model_version(name, version).tags:
        model = _manifest_of(client, name, version)
        client.set_model_version_tag(name, version, MANIFEST_TAG, model.to_tag())
    return Sealed(name, version, model, seal_retrieval_index(name, version, client))
