"""A model version's recommendation stage in the MLflow registry (its "retrieval index"): built by
`grec build-index` (jobs/), loaded by the endpoint (serving/), the batch job and offline evaluation.

The stage's files (recommend/stage.py: catalogue, co-visitation, popularity counts, the next-item
model, the fitted blends) are logged as artifacts of the run that produced the version, under
`retrieval/v<VERSION>`, and the version carries a tag with their URI: a version without the tag has
no stage, and serving falls back to popularity for it. A new build replaces the tag, so the
version's stage is always the last complete one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from recommend.stage import RecommendationStage

# The model version tag holding the artifact URI of its retrieval index.
INDEX_TAG = "grec.retrieval_index"
ARTIFACT_DIR = "retrieval"
def log_retrieval_index(name: str, version: str, directory: Path, client: MlflowClient | None = None) -> str:
    """Logs `directory` as the retrieval index of version `version` of `name`; returns its URI."""
    client = client or MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        raise ValueError(f"model {name} version {version} has no MLflow run to keep its retrieval index in")
    artifact_path = f"{ARTIFACT_DIR}/v{version}"
    client.log_artifacts(run_id, str(directory), artifact_path=artifact_path)
    uri = f"runs:/{run_id}/{artifact_path}"
    client.set_model_version_tag(name, version, INDEX_TAG, uri)
    return uri


def retrieval_index_uri(name: str, version: str, client: MlflowClient | None = None) -> str | None:
    """The artifact URI of the version's retrieval index; None when it has none."""
    return (client or MlflowClient()).get_model_version(name, version).tags.get(INDEX_TAG)


def download_retrieval_index(uri: str, destination: str | Path | None = None) -> Path:
    """The index's files in a local directory (a new temporary one unless `destination`)."""
    target = Path(destination) if destination else Path(tempfile.mkdtemp(prefix="grec-retrieval-"))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))


def load_recommendation_stage(name: str, version: str, client: MlflowClient | None = None) -> RecommendationStage | None:
    """The version's recommendation stage, or None when it has none (build it with `grec build-index`)."""
    uri = retrieval_index_uri(name, version, client)
    if uri is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return RecommendationStage.load(download_retrieval_index(uri, tmp))
