"""Batch inference with Ray Data: `map_batches` over a pool of actors, each loading the registered
model once; the model's own transforms turn raw rows into model columns inside the batch function."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from registry.pyfunc_model import SCORE_PREFIX


def score_column(task: str) -> str:
    """The column of a task's scores, named as the registered pyfunc model names it."""
    return f"{SCORE_PREFIX}{task}"


def scores_to_arrow(values: torch.Tensor) -> pa.Array:
    """[B] -> float32 column; [B, C] class probabilities -> fixed-size list<float32>[C] column."""
    array = values.detach().cpu().numpy().astype(np.float32)
    if array.ndim == 1:
        return pa.array(array)
    return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])


def arrow_to_scores(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Inverse of `scores_to_arrow`: [B] or [B, C] float array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy().reshape(len(column), column.type.list_size)
    return column.to_numpy(zero_copy_only=False)


class RegisteredModelScorer:
    """A Ray Data callable class: loads `model_uri` from the MLflow registry when the actor starts and
    turns raw batches into `keep_columns` plus one `score_<task>` column per task."""

    def __init__(self, model_uri: str, tracking_uri: str, keep_columns: Sequence[str],
                 tasks: Sequence[str] | None = None, torch_threads: int = 1) -> None:
        import mlflow

        from registry.models import load_registered

        # a pooled worker process may have served another store before: point it at this one
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        torch.set_num_threads(torch_threads)
        loaded = load_registered(model_uri)
        self.model = loaded.model.eval()
        self.transforms = loaded.transforms
        self.tasks = list(tasks) if tasks is not None else self.model.task_names
        self.keep_columns = list(keep_columns)

    def __call__(self, batch: pa.Table) -> pa.Table:
        columns = self.transforms.transform(batch)
        scores = self.model.predict(self.model.collate(columns), self.tasks)
        out = {name: batch.column(name) for name in self.keep_columns}
        out.update({score_column(task): scores_to_arrow(scores[task]) for task in self.tasks})
        return pa.table(out)


@dataclass(frozen=True)
class InferenceOptions:
    """How batch inference uses the cluster: `actors` model replicas of `cpus_per_actor` CPUs each,
    `batch_size` rows per call."""

    actors: int = 1
    cpus_per_actor: float = 1.0
    batch_size: int = 512

    def __post_init__(self) -> None:
        if self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def score_dataset(dataset, model_uri: str, tracking_uri: str | None, keep_columns: Sequence[str],
                  options: InferenceOptions, tasks: Sequence[str] | None = None):
    """A lazy Ray Dataset of `keep_columns` + score columns for every row of `dataset`. The actors use
    `tracking_uri`, else the driver's current MLflow registry."""
    import mlflow
    import ray.data

    tracking_uri = tracking_uri or mlflow.get_registry_uri()

    return dataset.map_batches(
        RegisteredModelScorer,
        fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri, "keep_columns": list(keep_columns),
                               "tasks": None if tasks is None else list(tasks),
                               "torch_threads": max(1, int(options.cpus_per_actor))},
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.cpus_per_actor,
        batch_size=options.batch_size,
        batch_format="pyarrow",
    )
