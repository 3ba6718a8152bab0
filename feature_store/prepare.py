"""`prepare_dataset`: a data source into a prepared-dataset directory (docs/CONTRACTS.md §3).

    DIR/offline/...            the offline store (one partitioned Parquet dataset per view)
    DIR/training_set/split=*/  raw point-in-time rows + labels
    DIR/transforms.json        fitted on the train split only
    DIR/dataset_spec.json      what the model reads
    DIR/definition.json        the dataset definition (jobs and serving rebuild rows with it)
    DIR/summary.json           rows, users, items and label rates per split
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_store.definitions import DatasetDefinition
from feature_store.errors import FeatureStoreError
from feature_store.offline_store import OfflineStore
from feature_store.sources import SourceOptions, get_source
from feature_store.training_set import (
    SplitConfig,
    build_training_set,
    iter_training_set,
    read_training_set,
    time_split_for,
)
from feature_store.transforms import DEFAULT_OOV_BUCKETS, TransformSet

# Target events per offline-store bucket when the bucket count is chosen automatically.
EVENTS_PER_BUCKET = 250_000


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


def prepare_dataset(name: str, out_dir: str | Path, *, options: SourceOptions | None = None,
                    split: SplitConfig | None = None, num_buckets: int | None = None,
                    oov_buckets: int = DEFAULT_OOV_BUCKETS, min_count: int = 1,
                    overwrite: bool = False, progress: bool = False) -> PreparedDataset:
    """Ingests dataset `name` into `out_dir`, builds the training set, fits the transforms and
    writes the spec and summary. `num_buckets` None: about one bucket per 250k events."""
    options = options or SourceOptions()
    split = split or SplitConfig()
    source = get_source(name, options)
    prepared = PreparedDataset(Path(out_dir))
    root = prepared.root
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise FeatureStoreError(f"{root} is not empty; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    definition = source.definition()
    buckets = num_buckets or max(1, math.ceil(source.estimated_events() / EVENTS_PER_BUCKET))
    store = OfflineStore(prepared.offline_dir, num_buckets=buckets)
    ingested = {}
    for view_name, chunks in source.tables():
        ingested[view_name] = store.ingest(definition.view(view_name), chunks, progress=progress).rows
    definition.save(prepared.definition_path)
    time_split = time_split_for(store, definition, split)
    stats = build_training_set(store, definition, prepared.training_dir, time_split, progress=progress)
    if stats.splits["train"].rows == 0:
        raise FeatureStoreError(f"{name}: the train split is empty; lower the validation/test fractions")
    transforms = TransformSet.fit(definition, iter_training_set(prepared.training_dir, "train"),
                                  oov_buckets=oov_buckets, min_count=min_count)
    transforms.save(prepared.transforms_path)
    prepared.spec_path.write_text(json.dumps(definition.dataset_spec(transforms), indent=2) + "\n")
    summary = {"dataset": name, "num_buckets": buckets, "ingested_rows": ingested,
               "tasks": [t.to_spec() for t in definition.tasks], **stats.to_dict()}
    prepared.summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return prepared
