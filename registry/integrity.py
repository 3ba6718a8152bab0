"""The integrity of a registered version's files: a manifest of every file's sha256 and size, recorded
in the model registry when the files are logged and checked before any of them is used.

The manifest lives in the registry (a model version tag), not beside the files: whoever can write the
artifact store (often a shared bucket) could rewrite a manifest kept there, while the registry is what
the aliases already trust. A logged directory holds exactly its manifest's files: one missing, one not
listed, one of another size or another sha256 refuses the whole directory, before any file is parsed
and before a file of the wrong size is even downloaded. Files are only ever read as data (safetensors,
JSON, the ANN index): nothing from the artifact store is imported or executed, checked or not.

A version without a manifest (registered before grec recorded them) loads with a warning unless
integrity is required: `require_integrity=True`, `--require-integrity` on the commands, or
GREC_REQUIRE_INTEGRITY=1 in the environment (which Ray workers inherit from grec's jobs).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

REQUIRE_INTEGRITY_ENV = "GREC_REQUIRE_INTEGRITY"
# How a version registered before manifests gets one (jobs/registry/cli.py; README: Registry integrity).
SEAL_COMMAND = "grec seal --model models:/{name}/{version}"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


class RefusedVersionError(ValueError):
    """A registered version (or its retrieval index) that must not be loaded: its files do not match
    its manifest, it has none where one is required, or this grec cannot read its layout. `reason` is
    a stable kind: missing_file, unlisted_file, size_mismatch, digest_mismatch, no_manifest,
    bad_manifest, unreadable_layout, unreadable_files."""

    def __init__(self, message: str, reason: str = "refused") -> None:
        super().__init__(message)
        self.reason = reason


class FileDigest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Manifest(BaseModel):
    """Every file of one logged directory (paths relative to it, `/`-separated) with its digest and
    size; `uri`: where the directory is, when it is not the model version's own files."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["grec.manifest"] = "grec.manifest"
    version: Literal[1] = 1
    uri: str | None = None
    files: dict[str, FileDigest]

    @field_validator("files")
    @classmethod
    def _relative_paths(cls, files: dict[str, FileDigest]) -> dict[str, FileDigest]:
        for name in files:
            path = PurePosixPath(name)
            if path.is_absolute() or ".." in path.parts or str(path) != name or not name:
                raise ValueError(f"file {name!r}: expected a relative path inside the logged directory")
        return files

    def to_tag(self) -> str:
        """The manifest as a compact JSON tag value (files sorted, so equal manifests are equal text)."""
        return json.dumps(self.model_dump(exclude_none=True), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_tag(cls, text: str, what: str) -> Manifest:
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            raise RefusedVersionError(f"{what}: its manifest tag is not a grec manifest "
                                      f"({err.errors()[0]['msg']})", "bad_manifest") from None

    def digest(self) -> str:
        """The sha256 of the manifest's own text: names one exact set of files."""
        return hashlib.sha256(self.to_tag().encode()).hexdigest()


def sha256_of(path: str | Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def directory_manifest(directory: str | Path, uri: str | None = None) -> Manifest:
    """The manifest of every file under `directory`."""
    directory = Path(directory)
    files = {path.relative_to(directory).as_posix(): FileDigest(sha256=sha256_of(path), size=path.stat().st_size)
             for path in sorted(directory.rglob("*")) if path.is_file()}
    return Manifest(uri=uri, files=files)


def integrity_required(explicit: bool | None = None) -> bool:
    """`explicit` when given, else whether GREC_REQUIRE_INTEGRITY is set to a true value."""
    if explicit is not None:
        return explicit
    value = os.environ.get(REQUIRE_INTEGRITY_ENV, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"${REQUIRE_INTEGRITY_ENV}={value!r}: expected 1 or 0 (true or false)")
    return value in _TRUE


@contextmanager
def integrity_requirement(required: bool) -> Iterator[None]:
    """GREC_REQUIRE_INTEGRITY set to 1 for the block when `required` (and restored after); unchanged otherwise."""
    if not required:
        yield
        return
    previous = os.environ.get(REQUIRE_INTEGRITY_ENV)
    os.environ[REQUIRE_INTEGRITY_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(REQUIRE_INTEGRITY_ENV, None)
        else:
            os.environ[REQUIRE_INTEGRITY_ENV] = previous


def seal_remedy(name: str, version: str) -> str:
    """What to run to give version `version` of model `name` a manifest."""
    return f"give it one with `{SEAL_COMMAND.format(name=name, version=version)}` (README: Registry integrity)"


def check_unverified(what: str, remedy: str, required: bool | None) -> None:
    """For files without a manifest: refuses them when integrity is required, else warns."""
    if integrity_required(required):
        raise RefusedVersionError(f"{what} has no manifest of its files, and integrity is required; {remedy}",
                                  "no_manifest")
    log.warning("%s has no manifest of its files: loaded without checking them; %s", what, remedy)


def fetch_verified(uri: str, manifest: Manifest | None, destination: str | Path, what: str) -> Path:
    """Downloads the files of the artifact directory `uri` into `destination` (same relative paths)
    and returns it. With a manifest, the directory must hold exactly its files, every one of the
    recorded size and sha256 (RefusedVersionError naming `what`, the file and both values otherwise)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.models_artifact_repo import REGISTERED_MODEL_META_FILE_NAME
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository

    if RunsArtifactRepository.is_runs_uri(uri):  # the store's own location: MLflow's runs:/ wrapper downloads
        uri = RunsArtifactRepository.get_underlying_uri(uri)  # a file of a subdirectory from the run's root
    repository = get_artifact_repository(uri)
    # MLflow's loaders (`mlflow models serve`, `mlflow.pyfunc.load_model` of a models:/ URI) write a
    # note of the registered name and version beside MLmodel, in the version's own folder when the
    # store is local. grec never reads it, so it is neither a file of the version nor a sign of tampering.
    found = {name: size for name, size in _list_files(repository).items() if name != REGISTERED_MODEL_META_FILE_NAME}
    if manifest is not None:
        _check_listing(manifest, found, what)
    wanted = list(manifest.files if manifest is not None else found)
    destination = Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for name in wanted:
        if name not in found:  # with a manifest, the listing check has named it already
            raise RefusedVersionError(f"{what}: file {name} is missing", "missing_file")
        local = Path(repository.download_artifacts(name, str(destination)))
        if manifest is not None:
            _check_file(local, name, manifest.files[name], what)
    return destination


def stored_manifest(uri: str, what: str) -> Manifest:
    """The manifest of the files of the artifact directory `uri` as the store holds them now (they
    are downloaded to a temporary directory): what registration records, and sealing for files
    logged before manifests (only for a store one trusts)."""
    with tempfile.TemporaryDirectory(prefix="grec-manifest-") as tmp:
        return directory_manifest(fetch_verified(uri, None, tmp, what))


def _list_files(repository, path: str | None = None) -> dict[str, int | None]:
    """Every file under `path` of an artifact repository with its size (None where the store does not say)."""
    files: dict[str, int | None] = {}
    for info in repository.list_artifacts(path):
        if info.is_dir:
            files.update(_list_files(repository, info.path))
        else:
            files[info.path] = info.file_size
    return files


def _check_listing(manifest: Manifest, found: dict[str, int | None], what: str) -> None:
    for name, expected in sorted(manifest.files.items()):
        if name not in found:
            raise RefusedVersionError(f"{what}: file {name} is missing (expected sha256 {expected.sha256}, "
                                      f"{expected.size} bytes)", "missing_file")
        if found[name] is not None and found[name] != expected.size:
            raise RefusedVersionError(f"{what}: file {name} is {found[name]} bytes, expected {expected.size} "
                                      f"(sha256 {expected.sha256}): it was changed after it was registered",
                                      "size_mismatch")
    unlisted = sorted(set(found) - set(manifest.files))
    if unlisted:
        more = f", nor are {len(unlisted) - 1} more" if len(unlisted) > 1 else ""
        raise RefusedVersionError(f"{what}: file {unlisted[0]} ({found[unlisted[0]]} bytes) is not in the manifest "
                                  f"recorded at registration{more}: it was added after", "unlisted_file")


def _check_file(local: Path, name: str, expected: FileDigest, what: str) -> None:
    size = local.stat().st_size
    if size != expected.size:
        raise RefusedVersionError(f"{what}: file {name} is {size} bytes, expected {expected.size} "
                                  f"(sha256 {expected.sha256}): it was changed after it was registered",
                                  "size_mismatch")
    found = sha256_of(local)
    if found != expected.sha256:
        raise RefusedVersionError(f"{what}: file {name} has sha256 {found}, expected {expected.sha256}: "
                                  "it was changed after it was registered", "digest_mismatch")
