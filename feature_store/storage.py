"""Prepared datasets at object-store URIs (`s3://BUCKET/PREFIX`) through pyarrow's filesystems.

A dataset at a URI has the layout of a local one (docs/CONTRACTS.md section 3).
- Writing: `publish_dir` uploads a finished local directory to a hidden staging prefix beside the
  target, then copies it into place (server-side), the files that make a dataset complete
  (definition, transforms, spec) last; an existing dataset is removed only once the new one is
  fully uploaded, so a failed upload leaves it as it was.
- Reading: training streams the Parquet files straight from the store (`list_files`; Ray Data and
  pyarrow take the URIs); the small JSON files are copied to a local cache (`fetch_metadata`);
  `fetch_dir` copies a whole dataset for jobs that read it from this machine.

Credentials come from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE,
a web identity token, an instance role), the endpoint of an S3-compatible store from
AWS_ENDPOINT_URL. Each entry point checks them first and names the URI when they are missing.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pyarrow.dataset as pads
import pyarrow.fs as pafs

from feature_store.errors import FeatureStoreError

logger = logging.getLogger(__name__)

SUPPORTED_SCHEMES = ("s3",)
# What `open_prepared` checks for: copied last when publishing, first when reading metadata.
METADATA_FILES = ("definition.json", "transforms.json", "dataset_spec.json", "summary.json")
CACHE_DIR = Path(".grec") / "cache"


class StorageError(FeatureStoreError):
    """An object-store location that cannot be used: no credentials, no bucket, nothing there."""


def is_uri(location: str | Path) -> bool:
    """True for `scheme://...` locations other than local files."""
    if isinstance(location, Path):
        return False
    scheme = urlparse(str(location)).scheme
    return "://" in str(location) and scheme not in ("", "file")


def _bucket_and_key(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme not in SUPPORTED_SCHEMES:
        raise StorageError(f"{uri}: unsupported storage scheme {parsed.scheme!r}; expected "
                           f"{' or '.join(s + '://BUCKET/PREFIX' for s in SUPPORTED_SCHEMES)} or a local path")
    if not parsed.netloc:
        raise StorageError(f"{uri}: no bucket; expected s3://BUCKET/PREFIX")
    return parsed.netloc, parsed.path.strip("/")


def check_credentials(uri: str) -> None:
    """Fails, naming `uri`, when the AWS credential chain finds nothing (an unsigned request would
    otherwise reach the store and fail later, or silently pass on a permissive test server)."""
    import botocore.exceptions
    import botocore.session

    _bucket_and_key(uri)
    try:
        credentials = botocore.session.get_session().get_credentials()
    except botocore.exceptions.BotoCoreError as err:  # e.g. a key id without its secret
        raise StorageError(f"{uri}: unusable S3 credentials: {err}") from None
    if credentials is None:
        raise StorageError(f"{uri}: no S3 credentials found; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                           "(or AWS_PROFILE, a web identity token or an instance role), and AWS_ENDPOINT_URL for "
                           "an S3-compatible store")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for `uri`, credentials checked."""
    check_credentials(uri)
    try:
        return pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as err:
        raise StorageError(f"{uri}: {err}") from None


def _info(fs: pafs.FileSystem, path: str, uri: str) -> pafs.FileInfo:
    try:
        return fs.get_file_info(path)
    except OSError as err:
        raise StorageError(f"cannot reach {uri}: {err}") from None


def check_bucket(uri: str) -> None:
    """The bucket of `uri` exists and answers with these credentials."""
    fs, _ = filesystem(uri)
    bucket, _ = _bucket_and_key(uri)
    if _info(fs, bucket, uri).type != pafs.FileType.Directory:
        raise StorageError(f"{uri}: bucket {bucket!r} does not exist (create it first)")


def check_dataset(uri: str) -> None:
    """`uri` holds a prepared dataset (its metadata files are there)."""
    fs, path = filesystem(uri)
    missing = [name for name in METADATA_FILES[:3] if _info(fs, f"{path}/{name}", uri).type != pafs.FileType.File]
    if missing:
        raise StorageError(f"{uri} is not a prepared dataset (missing {missing}); run "
                           f"`grec data prepare --dataset NAME --out {uri}` first")


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


def parquet_dataset(files: list[str]) -> pads.Dataset:
    """A pyarrow dataset over Parquet files given as local paths or URIs (of one store)."""
    if not files or not is_uri(files[0]):
        return pads.dataset(files, format="parquet")
    fs, _ = filesystem(files[0])
    return pads.dataset([pafs.FileSystem.from_uri(f)[1] for f in files], format="parquet", filesystem=fs)


def cache_dir(uri: str, workdir: str | Path | None = None) -> Path:
    """`<working directory>/.grec/cache/<scheme>/<bucket>/<key>`: where a dataset's files are copied."""
    bucket, key = _bucket_and_key(uri)
    return (Path(workdir or Path.cwd()) / CACHE_DIR / urlparse(uri).scheme / bucket / key).resolve()


def fetch_metadata(uri: str) -> Path:
    """Copies the dataset's small JSON files into its cache directory; returns that directory."""
    check_dataset(uri)
    fs, path = filesystem(uri)
    local = cache_dir(uri)
    local.mkdir(parents=True, exist_ok=True)
    for name in METADATA_FILES:
        if _info(fs, f"{path}/{name}", uri).type == pafs.FileType.File:
            pafs.copy_files(f"{path}/{name}", str(local / name), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
    return local


def fetch_dir(uri: str) -> Path:
    """A fresh local copy of the dataset at `uri` in its cache directory (replaced whole, so an
    interrupted copy never passes for a dataset)."""
    check_dataset(uri)
    fs, path = filesystem(uri)
    target = cache_dir(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    draft = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.fetch-"))
    try:
        pafs.copy_files(path, str(draft), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        if target.exists():
            shutil.rmtree(target)
        draft.rename(target)
    finally:
        shutil.rmtree(draft, ignore_errors=True)
    return target


def local_dataset(location: str | Path) -> Path:
    """A prepared dataset on this machine: the path itself, or a fresh copy of the one at a URI."""
    return fetch_dir(str(location).rstrip("/")) if is_uri(location) else Path(location)


def publish_dir(local: str | Path, uri: str, *, overwrite: bool = False) -> None:
    """Uploads directory `local` to `uri` through a staging prefix (see the module docstring)."""
    check_publish_target(uri, overwrite)
    fs, path = filesystem(uri)
    parent, _, name = path.rpartition("/")
    staging = f"{parent}/.{name}.staging-{uuid.uuid4().hex}" if parent else f".{name}.staging-{uuid.uuid4().hex}"
    try:
        pafs.copy_files(str(local), staging, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        files = [i.path for i in fs.get_file_info(pafs.FileSelector(staging, recursive=True))
                 if i.type == pafs.FileType.File]
        # The files that make the dataset complete go last: a reader never opens a partial one.
        top = staging.count("/") + 1
        files.sort(key=lambda p: (PurePosixPath(p).name in METADATA_FILES and p.count("/") == top, p))
        if _info(fs, path, uri).type != pafs.FileType.NotFound:
            fs.delete_dir_contents(path, missing_dir_ok=True)
        for source in files:
            fs.copy_file(source, path + source[len(staging):])
    except OSError as err:
        raise StorageError(f"cannot upload to {uri}: {err}") from None
    finally:
        try:
            fs.delete_dir(staging)
        except OSError:
            pass


@contextmanager
def output_dir(location: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Where to write a dataset bound for `location`: the local path itself, or, for a URI (checked
    first, before any work), a temporary directory published to it when the block succeeds."""
    if not is_uri(location):
        yield Path(location)
        return
    uri = str(location).rstrip("/")
    check_publish_target(uri, overwrite)
    with tempfile.TemporaryDirectory(prefix="grec-dataset-") as tmp:
        yield Path(tmp) / "dataset"
        logger.info("uploading to %s", uri)
        publish_dir(Path(tmp) / "dataset", uri, overwrite=overwrite)
