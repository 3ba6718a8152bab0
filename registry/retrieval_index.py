"""A model version's retrieval index in the MLflow registry: built by `grec build-index` (jobs/),
loaded by the endpoint (serving/) and by offline evaluation.

The files (the two-tower weights and config, the ANN index, the item ids in index order and the
build's metadata) are logged as artifacts of the run that produced the version, under
`retrieval/v<VERSION>`, and the version carries a tag with their URI: a version without the tag has
no index, and serving falls back to popularity for it. A new build replaces the tag, so the
version's index is always the last complete one.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient

# The model version tag holding the artifact URI of its retrieval index.
INDEX_TAG = "grec.retrieval_index"
ARTIFACT_DIR = "retrieval"
# Files of an index directory (the two-tower's own files are grec.retrieval's WEIGHTS_FILE, CONFIG_FILE).
ANN_FILE = "items.faiss"
ITEMS_FILE = "items.json"


def write_index_metadata(directory: Path, item_ids: list[Any], metadata: dict[str, Any]) -> None:
    """The raw item id of each index row (in row order) and what the build measured."""
    (directory / ITEMS_FILE).write_text(json.dumps({"item_ids": item_ids, **metadata}, indent=2))


def read_index_metadata(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / ITEMS_FILE).read_text())


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
