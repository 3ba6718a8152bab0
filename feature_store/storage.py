"""Prepared datasets at object-store URIs (`s3://BUCKET/PREFIX`) through pyarrow's filesystems.

A dataset at a URI is published in versions (docs/CONTRACTS.md section 3):

    PREFIX/current.json                   {"version": "<id>", ...}: the one version readers use
    PREFIX/versions/<id>/...              a whole dataset, in the layout of a local one

- Writing: `publish_dir` uploads a finished local directory under a fresh `versions/<id>/` prefix
  and switches `current.json` to it only once every object is written (one PUT, which S3 applies
  whole). A failure at any point before the switch leaves `current.json`, and so the dataset
  readers see, as it was; the half-written version is removed. After the switch the previous
  version is kept (a job that opened it before the switch can finish) and older ones are removed.
- Reading: every entry point follows the pointer once (`current_version`) and then reads that
  version only, so a job never mixes two versions. A folder written without a pointer (by an older
  grec) is read in place. The splits' Parquet files are read straight from the store, by Ray Data's
  tasks on any node as by the driver (`split_files`, `parquet_source`: paths inside the store's
  pyarrow filesystem, which each reader opens with its own node's credentials); the small JSON
  files are copied to a local cache (`fetch_metadata`). `open_dataset` gives a `PreparedDataset`
  either way: at a URI an `ObjectStoreDataset` whose splits stay in the store and whose offline
  store is copied to the cache when first used. `fetch_dir` copies a whole dataset for jobs that
  read it from this machine.

The URIs themselves (which locations are URIs, their credentials, their pyarrow filesystems) are
feature_store/object_store.py's. Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, AWS_PROFILE, a web identity token, an instance role), the endpoint of an
S3-compatible store from AWS_ENDPOINT_URL. Each entry point checks them first and names the URI
when they are missing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from feature_store.errors import FeatureStoreError
from feature_store.object_store import StorageError, bucket_and_key, filesystem, is_uri
from feature_store.offline_store import OfflineStore
from feature_store.prepare import PreparedDataset, open_prepared
from feature_store.training_set import iter_batches, split_dir

logger = logging.getLogger(__name__)

# What `open_prepared` checks for, copied first when reading metadata.
METADATA_FILES = ("definition.json", "transforms.json", "dataset_spec.json", "summary.json")
CACHE_DIR = Path(".grec") / "cache"
# The published layout (module docstring).
POINTER_FILE = "current.json"
VERSIONS_DIR = "versions"
POINTER_FORMAT = "grec.published-folder"


def _info(fs: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except OSError as err:
        raise StorageError(f"cannot reach {uri}: {err}") from None


def check_bucket(uri: str) -> None:
    """The bucket of `uri` exists and answers with these credentials."""
    fs, _ = filesystem(uri)
    bucket, _ = bucket_and_key(uri)
    if _info(fs, bucket, uri).type != pafs.FileType.Directory:
        raise StorageError(f"{uri}: bucket {bucket!r} does not exist (create it first)")


def _read_pointer(fs: pafs.FileSystem, path: str, uri: str) -> str | None:
    """The version id that `uri`'s pointer names, or None where there is no pointer."""
    if _info(fs, f"{path}/{POINTER_FILE}", uri).type != pafs.FileType.File:
        return None
    try:
        with fs.open_input_stream(f"{path}/{POINTER_FILE}") as stream:
            pointer = json.loads(stream.read())
        version = pointer["version"]
    except OSError as err:
        raise StorageError(f"cannot read {uri}/{POINTER_FILE}: {err}") from None
    except (ValueError, KeyError, TypeError):
        raise StorageError(f"{uri}/{POINTER_FILE} is not a version pointer (expected {{\"version\": ID}}); "
                           "publish the folder again") from None
    if not isinstance(version, str) or not version or "/" in version:
        raise StorageError(f"{uri}/{POINTER_FILE} names no valid version: {version!r}")
    return version


def current_version(uri: str) -> str:
    """The URI of the version that `uri`'s pointer names; `uri` itself for a folder without one."""
    uri = uri.rstrip("/")
    fs, path = filesystem(uri)
    version = _read_pointer(fs, path, uri)
    return uri if version is None else f"{uri}/{VERSIONS_DIR}/{version}"


def check_dataset(uri: str) -> str:
    """`uri` holds a prepared dataset (its current version's metadata files are there); returns the
    URI of that version."""
    version_uri = current_version(uri)
    fs, path = filesystem(version_uri)
    missing = [name for name in METADATA_FILES[:3]
               if _info(fs, f"{path}/{name}", version_uri).type != pafs.FileType.File]
    if missing:
        raise StorageError(f"{uri} is not a prepared dataset (missing {missing}); run "
                           f"`grec data prepare --dataset NAME --out {uri}` first")
    return version_uri


def check_publish_target(uri: str, overwrite: bool) -> None:
    """Before any work: the bucket answers, and without `overwrite` nothing is at `uri` yet."""
    check_bucket(uri)
    fs, path = filesystem(uri)
    if not overwrite and _info(fs, path, uri).type != pafs.FileType.NotFound:
        raise StorageError(f"{uri} is not empty; pass --overwrite to replace it")


def list_files(location: str | Path, subdir: str, suffix: str = ".parquet") -> list[str]:
    """Files under `location/subdir` ending in `suffix`, sorted, as URIs (or local paths);
    hidden names (`.`, `_`) are left out, as pyarrow's dataset discovery does."""
    if not is_uri(location):
        return [str(p) for p in sorted((Path(location) / subdir).glob(f"*{suffix}"))]
    uri = str(location).rstrip("/")
    fs, path = filesystem(uri)
    scheme = urlparse(uri).scheme
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{path}/{subdir}", allow_not_found=True))
    except OSError as err:
        raise StorageError(f"cannot list {uri}/{subdir}: {err}") from None
    return sorted(f"{scheme}://{i.path}" for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
                  and not PurePosixPath(i.path).name.startswith((".", "_")))


def split_files(location: str | Path, split: str) -> list[str]:
    """The Parquet files (paths or URIs) of one training-set split (CONTRACTS.md section 3)."""
    return list_files(location, split_dir("training_set", split).as_posix())


def parquet_source(files: list[str]) -> tuple[list[str], pafs.FileSystem | None]:
    """(paths, filesystem) to read Parquet files given as local paths or URIs (of one store): for
    URIs the paths inside the store's pyarrow filesystem (credentials checked here). The filesystem
    carries the store's endpoint but no credentials when pickled to Ray's tasks, so each node reads
    with its own; local paths come back as they are, with None (the local filesystem)."""
    if not files or not is_uri(files[0]):
        return list(files), None
    fs, _ = filesystem(files[0])
    return [pafs.FileSystem.from_uri(f)[1] for f in files], fs


def parquet_dataset(files: list[str]) -> pads.Dataset:
    """A pyarrow dataset over Parquet files given as local paths or URIs (of one store)."""
    paths, fs = parquet_source(files)
    return pads.dataset(paths, format="parquet", filesystem=fs)


def cache_dir(uri: str, workdir: str | Path | None = None) -> Path:
    """`<working directory>/.grec/cache/<scheme>/<bucket>/<key>`: where a dataset's files are copied."""
    bucket, key = bucket_and_key(uri)
    return (Path(workdir or Path.cwd()) / CACHE_DIR / urlparse(uri).scheme / bucket / key).resolve()


def fetch_metadata(uri: str) -> tuple[Path, str]:
    """Copies the current version's small JSON files into the dataset's cache directory; returns
    that directory and the version's URI (where the rest of the dataset is read)."""
    version_uri = check_dataset(uri)
    fs, path = filesystem(version_uri)
    local = cache_dir(uri)
    local.mkdir(parents=True, exist_ok=True)
    for name in METADATA_FILES:
        if _info(fs, f"{path}/{name}", version_uri).type == pafs.FileType.File:
            pafs.copy_files(f"{path}/{name}", str(local / name), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
        else:
            (local / name).unlink(missing_ok=True)  # a file of another version must not pass for this one's
    return local, version_uri


def _fetch_fresh(uri: str, target: Path) -> Path:
    """A fresh copy of the folder at `uri` in `target` (replaced whole, so an interrupted copy never
    passes for a complete one)."""
    fs, path = filesystem(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    draft = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.fetch-"))
    try:
        pafs.copy_files(path, str(draft), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        if target.exists():
            shutil.rmtree(target)
        draft.rename(target)
    except OSError as err:
        raise StorageError(f"cannot copy {uri} to this machine: {err}") from None
    finally:
        shutil.rmtree(draft, ignore_errors=True)
    return target


def fetch_dir(uri: str) -> Path:
    """A fresh local copy of the current version of the dataset at `uri`, in its cache directory."""
    return _fetch_fresh(check_dataset(uri), cache_dir(uri))


def local_dataset(location: str | Path) -> Path:
    """A prepared dataset on this machine: the path itself, or a fresh copy of the one at a URI."""
    return fetch_dir(str(location).rstrip("/")) if is_uri(location) else Path(location)


@dataclass(frozen=True)
class ObjectStoreDataset(PreparedDataset):
    """One version of a prepared dataset, read where it is: `uri` is the version's, `root` the local
    cache of its JSON files (definition, transforms, spec, summary), the splits are read from the
    store, and the offline store (the /v1/recommend replay's input) is copied into the cache when
    first used."""

    uri: str

    def read_split(self, split: str, columns: list[str] | None = None) -> pa.Table:
        files = split_files(self.uri, split)
        if not files:
            raise FeatureStoreError(f"{self.uri}: split {split!r} holds no rows")
        return parquet_dataset(files).to_table(columns=columns)

    def iter_split(self, split: str, columns: list[str] | None = None,
                   batch_size: int = 65_536) -> Iterator[pa.Table]:
        files = split_files(self.uri, split)
        if not files:
            return
        yield from iter_batches(parquet_dataset(files), columns, batch_size)

    def offline_store(self) -> OfflineStore:
        return OfflineStore(self._offline_copy)

    @cached_property
    def _offline_copy(self) -> Path:
        return _fetch_fresh(f"{self.uri}/offline", self.root / "offline")


def open_dataset(location: str | Path) -> PreparedDataset:
    """The prepared dataset at a local path (checked for completeness) or at a URI (its metadata
    cached here, the rest read from the store: ObjectStoreDataset)."""
    if not is_uri(location):
        return open_prepared(location)
    return ObjectStoreDataset(*fetch_metadata(str(location).rstrip("/")))


def location_of(prepared: PreparedDataset) -> str:
    """Where a prepared dataset lives: its version's URI, or its local directory."""
    return prepared.uri if isinstance(prepared, ObjectStoreDataset) else str(prepared.root)


def _new_version_id() -> str:
    """Sortable by time, unique across concurrent publishers."""
    return f"{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


def _write_pointer(fs: pafs.FileSystem, path: str, version: str) -> None:
    pointer = {"format": POINTER_FORMAT, "version": version, "published_at": dt.datetime.now(dt.UTC).isoformat()}
    with fs.open_output_stream(f"{path}/{POINTER_FILE}") as out:
        out.write(json.dumps(pointer).encode())


def _remove_superseded(fs: pafs.FileSystem, path: str, keep: set[str]) -> None:
    """Removes what readers no longer reach: versions other than `keep` and, once a folder written
    without a pointer is replaced, its files. A failure is logged: the new version is published."""
    try:
        for entry in fs.get_file_info(pafs.FileSelector(path)):
            name = PurePosixPath(entry.path).name
            if name == POINTER_FILE:
                continue
            if name == VERSIONS_DIR and entry.type == pafs.FileType.Directory:
                for version in fs.get_file_info(pafs.FileSelector(entry.path)):
                    if PurePosixPath(version.path).name not in keep:
                        fs.delete_dir(version.path)
            elif entry.type == pafs.FileType.Directory:
                fs.delete_dir(entry.path)
            else:
                fs.delete_file(entry.path)
    except OSError as err:
        logger.warning("published, but could not remove superseded versions under %s: %s", path, err)


def publish_dir(local: str | Path, uri: str, *, overwrite: bool = False) -> str:
    """Uploads directory `local` to `uri` as a new version and switches the pointer to it (see the
    module docstring); returns the new version's URI."""
    check_publish_target(uri, overwrite)
    fs, path = filesystem(uri)
    previous = _read_pointer(fs, path, uri)
    version = _new_version_id()
    prefix = f"{path}/{VERSIONS_DIR}/{version}"
    try:
        pafs.copy_files(str(local), prefix, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        _write_pointer(fs, path, version)  # the switch: readers see the new version from here on
    except OSError as err:
        try:
            fs.delete_dir(prefix)
        except OSError:
            pass  # never reachable without the pointer; the next publish's clean-up removes it
        raise StorageError(f"cannot upload to {uri}: {err} (the dataset there, if any, is unchanged)") from None
    _remove_superseded(fs, path, keep={version} | ({previous} if previous else set()))
    return f"{uri.rstrip('/')}/{VERSIONS_DIR}/{version}"


@contextmanager
def output_dir(location: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Where to write a dataset bound for `location`: the local path itself, or, for a URI (checked
    first, before any work), a temporary directory published to it as a new version when the block
    succeeds."""
    if not is_uri(location):
        yield Path(location)
        return
    uri = str(location).rstrip("/")
    check_publish_target(uri, overwrite)
    with tempfile.TemporaryDirectory(prefix="grec-dataset-") as tmp:
        yield Path(tmp) / "dataset"
        logger.info("uploading to %s", uri)
        publish_dir(Path(tmp) / "dataset", uri, overwrite=overwrite)
