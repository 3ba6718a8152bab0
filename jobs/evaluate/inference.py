"""Batch inference with Ray Data: `map_batches` over a pool of actors, each loading the registered
model once; the model's own transforms turn raw rows into model columns inside the batch function."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch

from registry.pyfunc_model import SCORE_PREFIX

if TYPE_CHECKING:
    from registry.models import RegisteredModel


def score_column(task: str) -> str:
    """The column of a task's scores, named as the registered pyfunc model names it."""
    return f"{SCORE_PREFIX}{task}"


def tensor_to_arrow(values: torch.Tensor) -> pa.Array:
    """[B] -> column; [B, N] -> fixed-size list[N] column; the dtype is kept."""
    array = values.detach().cpu().numpy()
    if array.ndim == 1:
        return pa.array(array)
    return pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])


def scores_to_arrow(values: torch.Tensor) -> pa.Array:
    """[B] -> float32 column; [B, C] class probabilities -> fixed-size list<float32>[C] column."""
    return tensor_to_arrow(values.float())


def arrow_to_scores(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Inverse of `tensor_to_arrow` (and `scores_to_arrow`): [B] or [B, C] array."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type):
        return column.flatten().to_numpy().reshape(len(column), column.type.list_size)
    return column.to_numpy(zero_copy_only=False)


def load_in_actor(model_uri: str, tracking_uri: str, torch_threads: int) -> RegisteredModel:
    """The registered model `model_uri`, in eval mode, loaded inside a Ray actor from `tracking_uri`."""
    import mlflow

    from registry.models import load_registered

    # The actor's process reads from this store from now on, not only for this load (the list ranker
    # loads the version's stage next); a pooled worker may have served another store before.
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    torch.set_num_threads(torch_threads)
    loaded = load_registered(model_uri)
    loaded.model.eval()
    return loaded


class RegisteredModelScorer:
    """A Ray Data callable class: loads `model_uri` from the MLflow registry when the actor starts and
    turns raw batches into `keep_columns` plus one `score_<task>` column per task."""

    def __init__(self, model_uri: str, tracking_uri: str, keep_columns: Sequence[str],
                 tasks: Sequence[str] | None = None, torch_threads: int = 1) -> None:
        loaded = load_in_actor(model_uri, tracking_uri, torch_threads)
        self.model = loaded.model
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


def map_with_model(dataset, actor_class: type, model_uri: str, tracking_uri: str | None, options: InferenceOptions,
                   **kwargs: Any):
    """A lazy Ray Dataset: `actor_class(model_uri=, tracking_uri=, torch_threads=, **kwargs)` (a class
    that loads the model with `load_in_actor`) over every batch of `dataset`, on `options.actors`
    actors. The actors use `tracking_uri`, else the driver's current MLflow registry."""
    import mlflow
    import ray.data

    return dataset.map_batches(
        actor_class,
        fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri or mlflow.get_registry_uri(),
                               "torch_threads": max(1, int(options.cpus_per_actor)), **kwargs},
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        num_cpus=options.cpus_per_actor,
        batch_size=options.batch_size,
        batch_format="pyarrow",
    )


def score_dataset(dataset, model_uri: str, tracking_uri: str | None, keep_columns: Sequence[str],
                  options: InferenceOptions, tasks: Sequence[str] | None = None):
    """A lazy Ray Dataset of `keep_columns` + score columns for every row of `dataset`."""
    return map_with_model(dataset, RegisteredModelScorer, model_uri, tracking_uri, options,
                          keep_columns=list(keep_columns), tasks=None if tasks is None else list(tasks))
