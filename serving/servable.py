"""One registered model version made ready to serve: raw request rows in, scores per task out
(recommend/ranker.py, the same path as batch prediction), and the version's recommendation stage
(recommend/stage.py) for requests without candidates, or the items seen most often in training when
the version has no stage.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from feature_store.definitions import DatasetDefinition
from feature_store.transforms import TransformSet
from grec import InputSpec, MultiTaskModel
from recommend.ranker import Ranker, TaskScores
from recommend.stage import RecommendationStage
from serving.errors import UnknownTaskError
from serving.openapi import request_value_schemas


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
    stage: RecommendationStage | None = None  # None: popularity candidates, ranked by the task

    def __post_init__(self) -> None:
        self.ranker = Ranker(self.model, self.transforms, self.spec)
        self.popular = list(self.transforms.vocabularies[self.spec.item_id].values)

    @property
    def task_names(self) -> list[str]:
        return self.ranker.task_names

    @property
    def recommend_tasks(self) -> list[str]:
        """Tasks /v1/recommend takes: the model's, and the ones the stage has a blend for (a dataset's
        implicit-feedback task that the ranker does not score, for one)."""
        return list(dict.fromkeys([*self.task_names, *(self.stage.blends if self.stage is not None else ())]))

    @property
    def task_modules(self) -> dict[str, Any]:
        return self.ranker.task_modules

    def check_task(self, task: str) -> None:
        if task not in self.task_names:
            raise UnknownTaskError(task, self.task_names)

    # ---- scoring ------------------------------------------------------------------------------------
    def score(self, task: str, raw_rows: pa.Table, user_tokens: np.ndarray | None = None) -> TaskScores:
        """Scores raw rows (the training set's raw schema) for one task (recommend.ranker.Ranker)."""
        self.check_task(task)
        return self.ranker.score(task, raw_rows, user_tokens)

    def score_tasks(self, tasks: list[str], raw_rows: pa.Table, user_tokens: np.ndarray | None = None,
                    rows_of: dict[str, np.ndarray] | None = None) -> dict[str, TaskScores]:
        """`score` for several tasks of the same rows, encoded once (recommend.ranker.Ranker.score_tasks)."""
        for task in tasks:
            self.check_task(task)
        return self.ranker.score_tasks(tasks, raw_rows, user_tokens, rows_of)

    def describe_stage(self) -> dict[str, Any]:
        if self.stage is None:
            return {"index": False}
        meta = self.stage.metadata
        return {"index": True, "items": self.stage.num_items, "sources": self.stage.sources,
                "built_at": meta.get("built_at"), "blends": self.stage.blends}

    def describe(self) -> dict[str, Any]:
        """What GET /v1/model and /v1/tasks report."""
        return {
            "name": self.name, "version": self.version, "alias": self.alias, "uri": self.uri,
            "tasks": self.task_names, "loaded_at": self.loaded_at.isoformat(),
            "recommend_tasks": self.recommend_tasks,
            "per_task_submodels": bool(self.task_modules), "precision": self.model.precision,
            "retrieval": self.describe_stage(),
            "task_specs": [
                {"name": t.name, "kind": t.kind, "role": t.role, "num_classes": t.num_classes,
                 "descriptors": dict(t.descriptors)}
                for t in self.ranker.tasks
            ],
            "request_values": request_value_schemas(self.definition),
        }
