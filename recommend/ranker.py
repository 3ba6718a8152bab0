"""The ranker: raw rows in, a task's scores out, for one loaded model version.

The scoring path is the offline one — `TransformSet.transform` -> `model.collate` -> predict — so a
served score equals the batch prediction for the same raw row. With `task` routing each task runs
through its exported sub-model (only its experts, skills merged); otherwise through the full model
restricted to the tasks asked for. Rows scored for several tasks are transformed, collated and
encoded once (`score_tasks`): the endpoint's blends and the registered pyfunc score several tasks of
the same rows, and most of a request's cost is that fixed per-call work, not its rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from feature_store.transforms import TransformSet
from grec import InputSpec, MultiTaskModel


# Up to this many tasks, each task's sub-model (its experts only, skills merged) costs less than one
# pass of the full model for all of them; beyond, the full model's one pass costs less (100 rows, one
# thread: 1 and 2 tasks 0.75x and 0.93x the full model's time, 4 tasks 1.4x).
SUB_MODELS_UP_TO = 2


@dataclass(frozen=True)
class TaskScores:
    """Scores of one task for a block of rows (row order kept)."""

    scores: np.ndarray  # [B] float64: probability, value, or expected class for multiclass
    known_items: np.ndarray  # [B] bool: False where the item id fell into an out-of-vocabulary bucket
    class_probabilities: np.ndarray | None = None  # [B, C] for multiclass tasks


class Ranker:
    """A model version's network, transforms and spec, scoring raw rows per task."""

    def __init__(self, model: MultiTaskModel, transforms: TransformSet, spec: InputSpec,
                 require_items: bool = True) -> None:
        """`require_items=False`: a version whose rows name no item with a vocabulary (Adult's one
        survey) is scored too, every row's item counted as known (the registered pyfunc scores any
        version's rows; ranking items needs the vocabulary)."""
        self.model = model.eval()
        self.transforms = transforms
        self.spec = spec
        # The tasks are the model's own (a model may train a subset of its dataset's tasks).
        self.tasks = model.config.input.tasks
        self._item_vocab = transforms.vocabularies.get(spec.item_id) if spec.item_id is not None else None
        if self._item_vocab is None and require_items:
            raise ValueError("the spec names no item id with a vocabulary; ranking items needs one")
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
        return self.score_tasks([task], raw_rows, user_tokens)[task]

    def score_tasks(self, tasks: list[str], raw_rows: pa.Table, user_tokens: np.ndarray | None = None,
                    rows_of: dict[str, np.ndarray] | None = None) -> dict[str, TaskScores]:
        """`score` for several tasks of the same rows: one transform, one collate and one pass of the
        shared encoders; then each task's own sub-model, or for more than SUB_MODELS_UP_TO tasks the
        full model's one pass for all of them. `rows_of`: the row positions a task scores (default
        all), its scores in that order."""
        columns = self.transforms.transform(raw_rows)
        batch = self.model.collate(columns)
        tokens = None if user_tokens is None else torch.from_numpy(np.ascontiguousarray(user_tokens, dtype=np.float32))
        rows_of = rows_of or {}
        with torch.inference_mode():
            if self.task_modules and len(tasks) <= SUB_MODELS_UP_TO:
                examples = self.model.encode_examples(batch, tokens)
                predicted = {task: self.task_modules[task].predict_examples(
                    examples if task not in rows_of else examples.index_select(0, torch.from_numpy(rows_of[task])))
                    for task in tasks}
            else:
                everything = self.model.predict(batch, list(tasks), tokens)
                predicted = {task: everything[task] if task not in rows_of else
                             everything[task].index_select(0, torch.from_numpy(rows_of[task])) for task in tasks}
        known = np.ones(raw_rows.num_rows, dtype=bool) if self._item_vocab is None else \
            columns.column(self.spec.item_id).to_numpy() > self._item_vocab.oov_buckets
        return {task: _task_scores(predicted[task].double().numpy(), known if task not in rows_of else
                                   known[rows_of[task]]) for task in tasks}


def _task_scores(predicted: np.ndarray, known: np.ndarray) -> TaskScores:
    if predicted.ndim == 2:  # class probabilities: rank by the expected class index
        expected = predicted @ np.arange(predicted.shape[1], dtype=np.float64)
        return TaskScores(expected, known, predicted)
    return TaskScores(predicted, known)
