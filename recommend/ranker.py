"""The ranker: raw rows in, a task's scores out, for one loaded model version.

The scoring path is the offline one — `TransformSet.transform` -> `model.collate` -> predict — so a
served score equals the batch prediction for the same raw row. With `task` routing each task runs
through its exported sub-model (only its experts, skills merged); otherwise through the full model
restricted to that task.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from feature_store.transforms import TransformSet
from grec import InputSpec, MultiTaskModel


@dataclass(frozen=True)
class TaskScores:
    """Scores of one task for a block of rows (row order kept)."""

    scores: np.ndarray  # [B] float64: probability, value, or expected class for multiclass
    known_items: np.ndarray  # [B] bool: False where the item id fell into an out-of-vocabulary bucket
    class_probabilities: np.ndarray | None = None  # [B, C] for multiclass tasks


class Ranker:
    """A model version's network, transforms and spec, scoring raw rows per task."""

    def __init__(self, model: MultiTaskModel, transforms: TransformSet, spec: InputSpec) -> None:
        self.model = model.eval()
        self.transforms = transforms
        self.spec = spec
        # The tasks are the model's own (a model may train a subset of its dataset's tasks).
        self.tasks = model.config.input.tasks
        item_key = spec.item_id
        if item_key is None or item_key not in transforms.vocabularies:
            raise ValueError("the spec names no item id with a vocabulary; ranking items needs one")
        self._item_vocab = transforms.vocabularies[item_key]
        self.task_modules: dict[str, nn.Module] = {}
        if self.per_task_routing:
            self.task_modules = {task.name: model.export_task(task.name).eval() for task in self.tasks}

    @property
    def task_names(self) -> list[str]:
        return [task.name for task in self.tasks]

    @property
    def binary_tasks(self) -> set[str]:
        return {task.name for task in self.tasks if task.kind == "binary"}

    @property
    def per_task_routing(self) -> bool:
        config = self.model.config
        return config.architecture == "grec" and config.router.mode == "task"

    def score(self, task: str, raw_rows: pa.Table, user_tokens: np.ndarray | None = None) -> TaskScores:
        """Scores raw rows (the training set's raw schema) for one of the spec's tasks. `user_tokens`
        [rows, num_user_tokens, d_model]: the rows' stored user sides (their user-side columns are
        then not read); None computes them from the rows."""
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
