"""Where served models come from: the MLflow registry, through `registry.models`.

A version is always loaded by number (`models:/NAME/VERSION`) after the alias was resolved, so
what is loaded is exactly the version that is then reported. Its files are checked against the
manifest recorded at registration and read as data (safetensors + JSON, the ANN index) with the
installed grec; a version that fails a check raises `RefusedVersionError`, in the replica and,
wrapped by Ray, in the ingress that asked for it (`refusal_of`).
"""

from __future__ import annotations

from collections.abc import Callable

import mlflow
from mlflow import MlflowClient

from registry.integrity import RefusedVersionError
from registry.models import RegisteredModel, load_registered, resolve_version
from recommend.stage import RecommendationStage
from registry.retrieval_index import load_recommendation_stage
from serving.config import ServingConfig
from serving.servable import ServableModel


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
    """Loads `version` of the configured model, its files checked and read as data."""
    _use_tracking_uri(config)
    loaded = load_registered(f"models:/{config.model_name}/{version}", require_integrity=config.require_integrity)
    return ServableModel(
        name=loaded.name, version=str(loaded.version), alias=config.model_alias, uri=config.model_uri,
        model=loaded.model, transforms=loaded.transforms, spec=loaded.spec, definition=loaded.definition,
        stage=load_stage(config, loaded),
    )


def load_stage(config: ServingConfig, loaded: RegisteredModel) -> RecommendationStage | None:
    """The version's recommendation stage when it has one (`grec build-index`) and the config asks
    for it; None (popularity candidates) otherwise."""
    if config.retrieval == "index":
        return load_recommendation_stage(loaded.name, str(loaded.version), require_integrity=config.require_integrity)
    return None


def refusal_of(error: BaseException) -> RefusedVersionError | None:
    """The registry's refusal of a version behind `error`: raised here, or in a replica (Ray then
    raises an error whose `cause` is it); None for any other failure (the registry or the artifact
    store not answering: worth retrying)."""
    seen: BaseException | None = error
    while seen is not None:
        cause = getattr(seen, "cause", None)  # Ray's RayTaskError: the exception the replica raised
        if isinstance(cause, BaseException):
            seen = cause
        elif isinstance(seen, RefusedVersionError):
            return seen
        else:
            seen = seen.__cause__
    return None
