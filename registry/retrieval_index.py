"""A model version's recommendation stage in the MLflow registry (its "retrieval index"): built by
`grec build-index` (jobs/), loaded by the endpoint (serving/), the batch job and offline evaluation.

The stage's files (recommend/stage.py: catalogue, co-visitation, popularity counts, the next-item
model, the fitted blends: whatever the build wrote) are logged as artifacts of the run that produced
the version, under `retrieval/v<VERSION>/<digest of their manifest>`, and the version carries two
tags: the manifest of the files with their URI (registry.integrity: every file's sha256 and size)
and the URI alone. A version without them has no stage, and serving falls back to popularity. Each
build logs to a new directory and then replaces the manifest tag in one write, so the version's
index is always the last complete one, and a build never changes files a reader is loading.
Loading checks every file against the manifest before any is read.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from mlflow import MlflowClient

from recommend.stage import RecommendationStage
from registry.integrity import (
    Manifest,
    RefusedVersionError,
    check_unverified,
    directory_manifest,
    fetch_verified,
    seal_remedy,
    stored_manifest,
)

# The model version tags holding the artifact URI of its retrieval index, and the index's manifest
# (with the same URI: the one tag a reader needs).
INDEX_TAG = "grec.retrieval_index"
INDEX_MANIFEST_TAG = "grec.retrieval_index.manifest"
ARTIFACT_DIR = "retrieval"


def log_retrieval_index(name: str, version: str, directory: Path, client: MlflowClient | None = None) -> str:
    """Logs every file of `directory` as the retrieval index of version `version` of `name`, with
    their manifest; returns the index's URI."""
    client = client or MlflowClient()
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        raise ValueError(f"model {name} version {version} has no MLflow run to keep its retrieval index in")
    files = directory_manifest(directory)
    artifact_path = f"{ARTIFACT_DIR}/v{version}/{files.digest()[:16]}"
    client.log_artifacts(run_id, str(directory), artifact_path=artifact_path)
    uri = f"runs:/{run_id}/{artifact_path}"
    client.set_model_version_tag(name, version, INDEX_MANIFEST_TAG, files.model_copy(update={"uri": uri}).to_tag())
    client.set_model_version_tag(name, version, INDEX_TAG, uri)
    return uri


def fetch_retrieval_index(name: str, version: str, destination: str | Path, *, require_integrity: bool | None = None,
                          client: MlflowClient | None = None) -> Path | None:
    """The version's index files in `destination`, each checked against the manifest logged with
    them; None when the version has no index. An index logged before manifests is refused when
    integrity is required (default: $GREC_REQUIRE_INTEGRITY), else fetched with a warning.
    Raises RefusedVersionError for files that fail a check."""
    tags = (client or MlflowClient()).get_model_version(name, version).tags
    what = f"the retrieval index of model {name} version {version}"
    if INDEX_MANIFEST_TAG in tags:
        manifest = Manifest.from_tag(tags[INDEX_MANIFEST_TAG], what)
        if manifest.uri is None:
            raise RefusedVersionError(f"{what}: its manifest does not say where the files are", "bad_manifest")
        return fetch_verified(manifest.uri, manifest, destination, what)
    if INDEX_TAG not in tags:
        return None
    check_unverified(what, seal_remedy(name, version), require_integrity)
    return fetch_verified(tags[INDEX_TAG], None, destination, what)


def seal_retrieval_index(name: str, version: str, client: MlflowClient | None = None) -> Manifest | None:
    """Records the manifest of an index logged before manifests, from its files as they are now;
    None when the version has no index or its index has a manifest already."""
    client = client or MlflowClient()
    tags = client.get_model_version(name, version).tags
    if INDEX_MANIFEST_TAG in tags or INDEX_TAG not in tags:
        return None
    uri = tags[INDEX_TAG]
    manifest = stored_manifest(uri, f"the retrieval index of model {name} version {version}").model_copy(
        update={"uri": uri})
    client.set_model_version_tag(name, version, INDEX_MANIFEST_TAG, manifest.to_tag())
    return manifest


def load_recommendation_stage(name: str, version: str, *, require_integrity: bool | None = None,
                              client: MlflowClient | None = None) -> RecommendationStage | None:
    """The version's recommendation stage, its files checked against their manifest (see
    `fetch_retrieval_index`); None when it has none (build it with `grec build-index`)."""
    with tempfile.TemporaryDirectory(prefix="grec-stage-") as tmp:
        directory = fetch_retrieval_index(name, version, tmp, require_integrity=require_integrity, client=client)
        return None if directory is None else RecommendationStage.load(directory)
