"""One registered model version made ready to serve: raw request rows in, scores per task out.

The scoring path is the offline one — `TransformSet.transform` -> `model.collate` -> predict —
so a served score equals the batch prediction for the same raw row. With `task` routing each task
runs through its exported sub-model (only its experts, skills merged); otherwise through the full
model restricted to that task. Candidates for requests without any come from the version's
`CandidateRetriever` (serving/retrieval.py: its retrieval index, else popularity).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from feature_store.definitions import DatasetDefinition
from feature_store.transforms import TransformSet
from grec import InputSpec, MultiTaskModel
from serving.errors import UnknownTaskError
from serving.openapi import request_value_schemas
from serving.retrieval import CandidateRetriever


@dataclass(frozen=True)
class TaskScores:
    """Scores of one task for a block of rows (row order kept)."""

    scores: np.ndarray  # [B] float64: probability, value, or expected class for multiclass
    known_items: np.ndarray  # [B] bool: False where the item id fell into an out-of-vocabulary bucket
    class_probabilities: np.ndarray | None = None  # [B, C] for multiclass tasks


@dataclass
class ServableModel:
    """A loaded model version with everything needed to turn raw rows into scores."""

    name: str
    version: str
    alias: str | None
    uri: str
    model: MultiTaskModel
    transforms: TransformSet
    spec: InputSpec
    definition: DatasetDefinition
    loaded_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    task_modules: dict[str, nn.Module] = field(default_factory=dict)
    retriever: CandidateRetriever | None = None  # None: popularity only

    def __post_init__(self) -> None:
        self.model.eval()
        if not self.task_modules and self.per_task_routing:
            self.task_modules = {task: self.model.export_task(task).eval() for task in self.task_names}
        item_key = self.spec.item_id
        if item_key is None or item_key not in self.transforms.vocabularies:
            raise ValueError(f"model {self.name} v{self.version}: the spec names no item id with a vocabulary; "
                             "serving ranks items and needs one")
        self._item_vocab = self.transforms.vocabularies[item_key]
        if self.retriever is None:
            self.retriever = CandidateRetriever(self.model, self.transforms, self.spec)

    @property
    def per_task_routing(self) -> bool:
        config = self.model.config
        return config.architecture == "grec" and config.router.mode == "task"

    @property
    def task_names(self) -> list[str]:
        return self.spec.task_names

    def check_task(self, task: str) -> None:
        if task not in self.task_names:
            raise UnknownTaskError(task, self.task_names)

    # ---- scoring ------------------------------------------------------------------------------------
    def score(self, task: str, raw_rows: pa.Table, user_tokens: np.ndarray | None = None) -> TaskScores:
        """Scores raw rows (the training set's raw schema) for one task. `user_tokens` [rows,
        num_user_tokens, d_model]: the rows' stored user sides (their user-side columns are then not
        read); None computes them from the rows."""
        self.check_task(task)
        columns = self.transforms.transform(raw_rows)
        batch = self.model.collate(columns)
        tokens = None if user_tokens is None else torch.from_numpy(np.ascontiguousarray(user_tokens, dtype=np.float32))
        with torch.inference_mode():
            module = self.task_modules.get(task)
            predicted = module.predict(batch, tokens) if module is not None else \
                self.model.predict(batch, [task], tokens)[task]
        predicted = predicted.double().numpy()
        item_ids = columns.column(self.spec.item_id).to_numpy()
        known = item_ids > self._item_vocab.oov_buckets
        if predicted.ndim == 2:  # class probabilities: rank by the expected class index
            expected = predicted @ np.arange(predicted.shape[1], dtype=np.float64)
            return TaskScores(expected, known, predicted)
        return TaskScores(predicted, known)

    def describe(self) -> dict[str, Any]:
        """What GET /v1/model and /v1/tasks report."""
        return {
            "name": self.name, "version": self.version, "alias": self.alias, "uri": self.uri,
            "tasks": self.task_names, "loaded_at": self.loaded_at.isoformat(),
            "per_task_submodels": bool(self.task_modules), "precision": self.model.precision,
            "retrieval": self.retriever.describe(),
            "task_specs": [
                {"name": t.name, "kind": t.kind, "role": t.role, "num_classes": t.num_classes,
                 "descriptors": dict(t.descriptors)}
                for t in self.spec.tasks
            ],
            "request_values": request_value_schemas(self.definition),
        }
