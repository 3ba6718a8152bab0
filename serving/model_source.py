"""Where served models come from: the MLflow registry, through `registry.models`.

A version is always loaded by number (`models:/NAME/VERSION`) after the alias was resolved, so
what is loaded is exactly the version that is then reported.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable

import mlflow
from mlflow import MlflowClient

from feature_store.definitions import DatasetDefinition
from registry.models import RegisteredModel, load_registered, resolve_version
from serving.config import ServingConfig
from recommend.stage import RecommendationStage
from registry.retrieval_index import load_recommendation_stage
from serving.servable import ServableModel

# Where the pyfunc model keeps the dataset definition (registry.models.log_model's artifacts).
DEFINITION_ARTIFACT = "artifacts/definition.json"


def _use_tracking_uri(config: ServingConfig) -> None:
    # Replicas are separate processes: each points MLflow at the configured store itself.
    if config.tracking_uri is not None:
        mlflow.set_tracking_uri(config.tracking_uri)
        mlflow.set_registry_uri(config.tracking_uri)


def version_resolver(config: ServingConfig) -> Callable[[], str]:
    """A function returning the version the configured URI names now (the alias's, or the pinned one)."""
    _use_tracking_uri(config)
    client = MlflowClient(tracking_uri=config.tracking_uri, registry_uri=config.tracking_uri)
    return lambda: resolve_version(config.model_uri, client)[1]


def load_servable(config: ServingConfig, version: str) -> ServableModel:
    """Loads `version` of the configured model (no pickle: safetensors + JSON through the pyfunc)."""
    _use_tracking_uri(config)
    loaded = load_registered(f"models:/{config.model_name}/{version}")
    return ServableModel(
        name=loaded.name, version=str(loaded.version), alias=config.model_alias, uri=config.model_uri,
        model=loaded.model, transforms=loaded.transforms, spec=loaded.spec, definition=loaded.definition,
        stage=load_stage(config, loaded),
    )


def load_stage(config: ServingConfig, loaded: RegisteredModel) -> RecommendationStage | None:
    """The version's recommendation stage when it has one (`grec build-index`) and the config asks
    for it; None (popularity candidates) otherwise."""
    if config.retrieval == "index":
        return load_recommendation_stage(loaded.name, str(loaded.version))
    return None


def load_definition(config: ServingConfig, version: str) -> DatasetDefinition:
    """Only the dataset definition of `version` (the feature lookup needs no weights)."""
    _use_tracking_uri(config)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{config.model_name}/{version}/{DEFINITION_ARTIFACT}", dst_path=tmp)
        return DatasetDefinition.load(path)
