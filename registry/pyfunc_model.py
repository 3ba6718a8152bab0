"""The MLflow pyfunc flavour of a registered grec version, for MLflow's own tools (`mlflow models
serve`, Spark UDFs, `mlflow.pyfunc.load_model`): a loader module.

MLflow imports this module from the environment it runs in (the installed grec: a version holds no
code) and calls `_load_pyfunc` with the version's data directory (registry.layout); `predict` takes
raw rows (the training set's columns, labels not needed) and returns one `score_<task>` column per
task. grec's own commands and the endpoint do not go through MLflow's loader: they read the same
files as data (registry.models.load_registered), after checking them against the version's manifest.
Loading any pyfunc model runs code: this module, or whatever another version's MLmodel file names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

SCORE_PREFIX = "score_"


def score_rows(ranker: Any, rows: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
    """Raw rows -> one `score_<task>` column per task of `tasks` (default: all the model's), through
    `ranker` (recommend.ranker.Ranker): the endpoint's own scoring of rows, one transform, collation
    and encoder pass for all the tasks. The endpoint builds its rows from a user id and the online
    store; a pyfunc caller hands them in, so only that step differs (pandas to Arrow here)."""
    tasks = ranker.model.config.check_tasks(list(tasks or ranker.task_names))
    scored = ranker.score_tasks(tasks, pa.Table.from_pandas(rows, preserve_index=False))
    # float32, as the network computes them (the ranker hands float64 copies to the endpoint's blend).
    return pd.DataFrame({f"{SCORE_PREFIX}{task}": scored[task].scores.astype(np.float32)
                         if scored[task].class_probabilities is None
                         else list(scored[task].class_probabilities.astype(np.float32)) for task in tasks})


class GRecPyfuncModel:
    """What MLflow's pyfunc wraps: the version's ranker (model, transforms, spec)."""

    def __init__(self, model: Any, transforms: Any, spec: Any) -> None:
        from recommend.ranker import Ranker

        self.ranker = Ranker(model, transforms, spec, require_items=False)

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return score_rows(self.ranker, model_input, (params or {}).get("tasks"))


def _load_pyfunc(data_path: str) -> GRecPyfuncModel:
    """MLflow's entry point: the version's data directory (`data/grec` of its files) read as data."""
    from registry.layout import read_data

    data = read_data(Path(data_path))
    return GRecPyfuncModel(data.model, data.transforms, data.spec)
