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

import pandas as pd
import pyarrow as pa

SCORE_PREFIX = "score_"


def score_rows(model: Any, transforms: Any, rows: pd.DataFrame, tasks: list[str] | None = None) -> pd.DataFrame:
    """Raw rows -> one `score_<task>` column per task of `tasks` (default: all the model's)."""
    tasks = list(tasks or model.task_names)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    scores = model.predict(model.collate(transforms.transform(table)), tasks)
    return pd.DataFrame({f"{SCORE_PREFIX}{task}": list(values.numpy()) if values.ndim > 1 else values.numpy()
                         for task, values in scores.items()})


class GRecPyfuncModel:
    """What MLflow's pyfunc wraps: the version's model and transforms."""

    def __init__(self, model: Any, transforms: Any) -> None:
        self.model = model
        self.transforms = transforms

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return score_rows(self.model, self.transforms, model_input, (params or {}).get("tasks"))


def _load_pyfunc(data_path: str) -> GRecPyfuncModel:
    """MLflow's entry point: the version's data directory (`data/grec` of its files) read as data."""
    from registry.layout import read_data

    data = read_data(Path(data_path))
    return GRecPyfuncModel(data.model, data.transforms)
