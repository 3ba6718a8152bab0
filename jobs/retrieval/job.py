"""`build_retrieval_index`: the retrieval index of one registered model version, as a Ray batch job.

1. Ray Data encodes, with the frozen model, the positive rows of the positive task in the prepared
   dataset's train and validation splits (everything before its test period: the user side and the
   item of each) and one row per catalogue item (its latest such row).
2. A Ray task trains the two-tower head (grec.retrieval) on them, embeds every catalogue item, builds
   the ANN index (jobs/retrieval/index.py) and measures its recall against exact search.
3. The driver logs the files as the version's retrieval index (registry.retrieval_index): the
   endpoint serving that version loads them; other versions are not touched.
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from feature_store.options import SPLITS
from feature_store.prepare import PreparedDataset
from grec.retrieval import RetrievalInputs, TwoTowerConfig
from jobs.evaluate.inference import InferenceOptions
from jobs.evaluate.job import ResolvedModel, prepare_evaluation
from jobs.retrieval.encode import encode_rows
from jobs.retrieval.index import IndexKind
from jobs.ray_runtime import ray_session

logger = logging.getLogger(__name__)

# Users sampled to measure the index's recall against exact search.
RECALL_QUERIES = 500
RECALL_K = 100


@dataclass(frozen=True)
class IndexBuildConfig:
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    positive_task: str | None = None  # a binary task; None: the model's first main binary task
    # The splits whose positives train the towers: all but the test split, which evaluation keeps.
    splits: tuple[str, ...] = ("train", "validation")
    index: IndexKind = "hnsw"
    hnsw_m: int = 32
    ef_construction: int = 200
    ef_search: int = 128
    train_cpus: float = 1.0  # CPUs of the Ray task that trains the towers
    inference: InferenceOptions = field(default_factory=InferenceOptions)

    def __post_init__(self) -> None:
        if self.index not in ("hnsw", "flat"):
            raise ValueError(f"index must be 'hnsw' or 'flat', got {self.index!r}")
        if self.hnsw_m < 2 or self.ef_construction < 1 or self.ef_search < 1:
            raise ValueError("hnsw_m must be >= 2, ef_construction and ef_search >= 1")
        if not self.splits or set(self.splits) - set(SPLITS):
            raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {self.splits}")
        if self.train_cpus <= 0:
            raise ValueError(f"train_cpus must be > 0, got {self.train_cpus}")


@dataclass(frozen=True)
class IndexBuildResult:
    model_name: str
    model_version: str
    uri: str  # where the index's files are (the version's tag names it too)
    positive_task: str
    positives: int
    items: int
    losses: list[float]
    ann_recall: float
    seconds: dict[str, float]  # encode, train_and_index, log, total


def positive_task(model: ResolvedModel, requested: str | None) -> str:
    """The binary task whose positive rows train the towers."""
    tasks = {t.name: t for t in model.spec.tasks}
    if requested is not None:
        if requested not in tasks or tasks[requested].kind != "binary":
            binary = [t for t, spec in tasks.items() if spec.kind == "binary"]
            raise ValueError(f"--positive-task {requested!r}: expected one of the model's binary tasks {binary}")
        return requested
    main = [t.name for t in model.spec.tasks if t.kind == "binary" and t.role == "main"]
    binary = [t.name for t in model.spec.tasks if t.kind == "binary"]
    if not (main or binary):
        raise ValueError(f"model {model.name} has no binary task whose positives could train retrieval "
                         f"(tasks: {list(tasks)})")
    return (main or binary)[0]


def catalogue_rows(train: pa.Table, item_key: str, timestamp: str | None) -> pa.Table:
    """Each item's latest training row (the item's features as the model was trained with them)."""
    ordered = train.sort_by([(item_key, "ascending"), *([(timestamp, "ascending")] if timestamp else [])])
    items = ordered.column(item_key).to_numpy(zero_copy_only=False)
    last = np.r_[items[1:] != items[:-1], True] if len(items) else np.zeros(0, bool)
    return ordered.filter(pa.array(last))


def _train_and_index(model_uri: str, tracking_uri: str, positives: RetrievalInputs, catalogue: RetrievalInputs,
                     config: IndexBuildConfig) -> tuple[dict[str, bytes], dict[str, Any]]:
    """On a Ray worker: trains the towers, indexes the catalogue; returns the index's files (name ->
    bytes, so the driver can log them from any node) and what was measured."""
    import mlflow

    from grec.retrieval import item_embeddings, model_item_table, save_two_tower, train_two_tower
    from jobs.retrieval.index import ann_recall, build_ann_index
    from registry.models import load_registered
    from registry.retrieval_index import ANN_FILE

    import faiss

    torch.set_num_threads(max(1, int(config.train_cpus)))
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    item_table = model_item_table(load_registered(model_uri).model)
    catalog_tokens = torch.zeros(item_table.shape[0], catalogue.item_tokens.shape[1])
    catalog_tokens[catalogue.items] = catalogue.item_tokens
    tower, losses = train_two_tower(positives, catalog_tokens, item_table, config.two_tower)
    vectors = item_embeddings(tower, catalog_tokens, catalogue.items)
    index = build_ann_index(vectors, config.index, config.hnsw_m, config.ef_construction)
    sample = torch.randperm(len(positives.items), generator=torch.Generator().manual_seed(0))[:RECALL_QUERIES]
    with torch.no_grad():
        history = None if positives.history is None else positives.history[sample]
        queries = tower.user_embedding(positives.user_tokens[sample], history).numpy()
    recall = ann_recall(index, vectors, queries, RECALL_K, config.ef_search)
    with tempfile.TemporaryDirectory() as tmp:
        save_two_tower(tower, tmp)
        faiss.write_index(index, str(Path(tmp) / ANN_FILE))
        files = {path.name: path.read_bytes() for path in Path(tmp).iterdir()}
    return files, {"losses": losses, "ann_recall": recall}


def build_retrieval_index(model_uri: str, data_dir: str | Path, config: IndexBuildConfig | None = None, *,
                          tracking_uri: str | None = None, address: str | None = None) -> IndexBuildResult:
    """Builds and logs the retrieval index of the version `model_uri` names (see the module's
    docstring). Model and data are checked before Ray starts."""
    import mlflow
    import ray

    from registry.retrieval_index import log_retrieval_index, write_index_metadata

    config = config or IndexBuildConfig()
    started = time.perf_counter()
    model, prepared = prepare_evaluation(model_uri, data_dir, "train")
    task = positive_task(model, config.positive_task)
    positives, catalogue = _training_rows(model, prepared, task, config.splits)
    if positives.num_rows < 2:
        raise ValueError(f"{prepared.root}: splits {list(config.splits)} hold {positives.num_rows} positive rows of "
                         f"task {task!r}; the towers need at least 2")
    seconds: dict[str, float] = {}
    tracking_uri = tracking_uri or mlflow.get_registry_uri()
    with ray_session(address):
        mark = time.perf_counter()
        encoded = encode_rows(positives, model.pinned_uri, tracking_uri, config.inference)
        encoded_catalogue = encode_rows(catalogue, model.pinned_uri, tracking_uri, config.inference)
        seconds["encode"] = time.perf_counter() - mark
        mark = time.perf_counter()
        remote = ray.remote(num_cpus=config.train_cpus)(_train_and_index)
        files, measured = ray.get(remote.remote(model.pinned_uri, tracking_uri, encoded, encoded_catalogue, config))
        seconds["train_and_index"] = time.perf_counter() - mark
    mark = time.perf_counter()
    item_key = model.spec.item_id
    item_ids = catalogue.column(item_key).to_pylist()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        for name, content in files.items():
            (directory / name).write_bytes(content)
        write_index_metadata(directory, item_ids, {
            "kind": config.index, "positive_task": task, "positives": positives.num_rows,
            "splits": list(config.splits), "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "ann_recall_at_100": measured["ann_recall"], "final_loss": measured["losses"][-1],
            "two_tower": config.two_tower.model_dump()})
        uri = log_retrieval_index(model.name, model.version, directory)
    seconds["log"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - started
    logger.info("retrieval index of %s version %s: %d items, %d positives of %r, ANN recall@%d %.3f, %.1f s",
                model.name, model.version, len(item_ids), positives.num_rows, task, RECALL_K, measured["ann_recall"],
                seconds["total"])
    return IndexBuildResult(model.name, model.version, uri, task, positives.num_rows, len(item_ids),
                            measured["losses"], measured["ann_recall"], {k: round(v, 2) for k, v in seconds.items()})


def _training_rows(model: ResolvedModel, prepared: PreparedDataset, task: str,
                   splits: tuple[str, ...]) -> tuple[pa.Table, pa.Table]:
    """(positive rows of `task` in `splits`, one row per catalogue item)."""
    spec = model.spec
    train = pa.concat_tables([prepared.read_split(split) for split in splits])
    label = spec.task(task).label
    positives = train.filter(pc.equal(pc.fill_null(train.column(label), 0), 1))
    # The catalogue is what the item vocabulary knows: other items share out-of-vocabulary ids.
    vocabulary = model.transforms.vocabularies[spec.item_id]
    values = pa.array(vocabulary.values, vocabulary.value_type)
    known = train.filter(pc.is_in(train.column(spec.item_id), value_set=values))
    return positives, catalogue_rows(known, spec.item_id, spec.timestamp)
