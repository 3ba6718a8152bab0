"""`prepare_dataset`: a data source into a prepared-dataset directory (docs/CONTRACTS.md §3).

    DIR/offline/...            the offline store (one partitioned Parquet dataset per view)
    DIR/training_set/split=*/  raw point-in-time rows + labels
    DIR/transforms.json        fitted on the train split only
    DIR/dataset_spec.json      what the model reads
    DIR/definition.json        the dataset definition (jobs and serving rebuild rows with it)
    DIR/summary.json           rows, users, items and label rates per split

The whole directory is written aside (a hidden sibling folder) and renamed into place only when
complete: a failure, bad input included, leaves DIR exactly as it was, and `overwrite` replaces an
existing dataset only then.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_store.atomic import replace_dir, sibling
from feature_store.definitions import DatasetDefinition
from feature_store.errors import FeatureStoreError
from feature_store.offline_store import OfflineStore
from feature_store.options import DEFAULT_OOV_BUCKETS, SourceOptions, SplitConfig
from feature_store.sources import get_source
from feature_store.sources.base import DataSource
from feature_store.training_set import build_training_set, iter_training_set, read_training_set, splitter_for
from feature_store.transforms import TransformSet

# Target events per offline-store bucket when the bucket count is chosen automatically.
EVENTS_PER_BUCKET = 250_000

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedDataset:
    """Paths and loaders of a prepared-dataset directory."""

    root: Path

    @property
    def offline_dir(self) -> Path:
        return self.root / "offline"

    @property
    def training_dir(self) -> Path:
        return self.root / "training_set"

    @property
    def transforms_path(self) -> Path:
        return self.root / "transforms.json"

    @property
    def spec_path(self) -> Path:
        return self.root / "dataset_spec.json"

    @property
    def definition_path(self) -> Path:
        return self.root / "definition.json"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    def definition(self) -> DatasetDefinition:
        return DatasetDefinition.load(self.definition_path)

    def transforms(self) -> TransformSet:
        return TransformSet.load(self.transforms_path)

    def spec(self) -> dict[str, Any]:
        return json.loads(self.spec_path.read_text())

    def summary(self) -> dict[str, Any]:
        return json.loads(self.summary_path.read_text())

    def offline_store(self) -> OfflineStore:
        return OfflineStore(self.offline_dir)

    def read_split(self, split: str, columns: list[str] | None = None):
        return read_training_set(self.training_dir, split, columns)

    def iter_split(self, split: str, columns: list[str] | None = None, batch_size: int = 65_536):
        return iter_training_set(self.training_dir, split, columns, batch_size)


def open_prepared(path: str | Path) -> PreparedDataset:
    """A prepared directory, checked for completeness."""
    prepared = PreparedDataset(Path(path))
    needed = [prepared.definition_path, prepared.transforms_path, prepared.spec_path, prepared.training_dir]
    missing = [p.name for p in needed if not p.exists()]
    if missing:
        raise FeatureStoreError(f"{prepared.root} is not a prepared dataset (missing {missing}); "
                                "run `grec data prepare --dataset NAME --out DIR` first")
    return prepared


def _check_target(root: Path, overwrite: bool) -> None:
    """Refuses, before any work, an output that is a file, a non-empty directory without
    `overwrite`, or (with it) a non-empty directory that is not a prepared dataset."""
    if root.exists() and not root.is_dir():
        raise FeatureStoreError(f"output {root} is a file; expected a directory for the prepared dataset")
    if not root.exists() or not any(root.iterdir()):
        return
    if not overwrite:
        raise FeatureStoreError(f"output {root} is not empty; pass overwrite=True (--overwrite) to replace the "
                                "dataset in it")
    if not (root / "definition.json").exists() and not (root / "offline").is_dir():
        raise FeatureStoreError(f"output {root} is not empty and holds no prepared dataset; refusing to replace "
                                "it: name a new or empty directory")


def prepare_dataset(dataset: str | DataSource, out_dir: str | Path, *, options: SourceOptions | None = None,
                    split: SplitConfig | None = None, num_buckets: int | None = None,
                    oov_buckets: int = DEFAULT_OOV_BUCKETS, min_count: int = 1,
                    overwrite: bool = False, progress: bool = False) -> PreparedDataset:
    """Ingests `dataset` (a built-in's name, or a source such as a declared dataset's,
    feature_store.sources.declared.open_declared) into `out_dir`, builds the training set, fits the
    transforms and writes the spec and summary. `num_buckets` None: about one bucket per 250k events.

    Everything is written into a hidden sibling of `out_dir` first; `out_dir` (with `overwrite`,
    the dataset already there) is replaced only once the new one is complete."""
    source = dataset if isinstance(dataset, DataSource) else get_source(dataset, options or SourceOptions())
    root = Path(out_dir)
    _check_target(root, overwrite)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling(root, "staging")
    replacing = root.exists() and any(root.iterdir())
    logger.debug("preparing %s in %s, to be renamed to %s when complete", source.name, staging, root)
    try:
        _write_dataset(source, PreparedDataset(staging), split or SplitConfig(), num_buckets, oov_buckets,
                       min_count, progress)
        replace_dir(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if replacing:
        logger.info("replaced the dataset that was in %s", root)
    return PreparedDataset(root)


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Logs how long a stage of the prepare took (benchmarks read the record's `stage` and `seconds`)."""
    start = time.perf_counter()
    yield
    seconds = time.perf_counter() - start
    logger.debug("%s took %.1f s", name, seconds, extra={"stage": name, "seconds": seconds})


def _write_dataset(source: DataSource, prepared: PreparedDataset, split: SplitConfig, num_buckets: int | None,
                   oov_buckets: int, min_count: int, progress: bool) -> None:
    definition = source.definition()
    buckets = num_buckets or max(1, math.ceil(source.estimated_events() / EVENTS_PER_BUCKET))
    store = OfflineStore(prepared.offline_dir, num_buckets=buckets)
    ingested = {}
    for view_name, chunks in source.tables():
        try:
            with _stage(f"ingest {view_name}"):
                ingested[view_name] = store.ingest(definition.view(view_name), chunks, progress=progress).rows
        except FeatureStoreError as err:
            # Name the file the rows came from: the view alone does not tell the user what to fix.
            raise type(err)(f"{source.origin(view_name)}: {err}") from None
    definition.save(prepared.definition_path)
    with _stage("training set"):
        stats = build_training_set(store, definition, prepared.training_dir, splitter_for(store, definition, split),
                                   progress=progress)
    if stats.splits["train"].rows == 0:
        raise FeatureStoreError(f"{source.name}: the train split is empty; lower the validation/test fractions")
    if split.per_user and stats.splits["test"].rows == 0:
        raise FeatureStoreError(
            f"{source.name}: the {split.protocol} split needs users with at least two events (a history and an "
            f"event to predict); every one of its {stats.splits['train'].users} users has one. Use --split "
            "global_time for this dataset")
    split_stats = stats.to_dict()
    source.check_splits(split_stats["splits"])
    with _stage("transforms"):
        transforms = TransformSet.fit(definition, iter_training_set(prepared.training_dir, "train"),
                                      oov_buckets=oov_buckets, min_count=min_count)
    transforms.save(prepared.transforms_path)
    prepared.spec_path.write_text(json.dumps(definition.dataset_spec(transforms.vocab_sizes()), indent=2) + "\n")
    summary = {"dataset": source.name, "num_buckets": buckets, "ingested_rows": ingested,
               **({"source": report} if (report := source.report()) else {}),
               "tasks": [t.to_spec() for t in definition.tasks], **split_stats}
    prepared.summary_path.write_text(json.dumps(summary, indent=2) + "\n")
