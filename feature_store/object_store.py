"""Object-store locations (`s3://BUCKET/PREFIX`): telling one from a local path, checking the
credentials for it, and the pyarrow filesystem that reads and writes it.

Data sources read their files through it as prepared datasets are published through it
(feature_store/storage.py); it knows neither, so both can import it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from feature_store.errors import FeatureStoreError

SUPPORTED_SCHEMES = ("s3",)


class StorageError(FeatureStoreError):
    """An object-store location that cannot be used: no credentials, no bucket, nothing there."""


def is_uri(location: str | Path) -> bool:
    """True for `scheme://...` locations other than local files."""
    if isinstance(location, Path):
        return False
    scheme = urlparse(str(location)).scheme
    return "://" in str(location) and scheme not in ("", "file")


def bucket_and_key(uri: str) -> tuple[str, str]:
    """(bucket, key) of an `s3://BUCKET/KEY` URI; StorageError for another scheme or no bucket."""
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

    bucket_and_key(uri)
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
