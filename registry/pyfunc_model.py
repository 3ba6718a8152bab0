"""The MLflow pyfunc model of grec, logged as code ("models from code": no pickled object).

Loading rebuilds the network from the logged safetensors weights and JSON config with
`grec.load_model`, and the feature transforms from their JSON; `predict` takes raw rows (the
training set's columns, labels not needed) and returns one `score_<task>` column per task.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
import pyarrow as pa

SCORE_PREFIX = "score_"


class GRecPyfuncModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from feature_store.definitions import DatasetDefinition
        from feature_store.transforms import TransformSet
        from grec import InputSpec, load_model

        self.model = load_model(context.artifacts["model"])
        self.transforms = TransformSet.load(context.artifacts["transforms"])
        self.spec = InputSpec.from_json(context.artifacts["dataset_spec"])
        self.definition = DatasetDefinition.load(context.artifacts["definition"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        tasks = list((params or {}).get("tasks") or self.model.task_names)
        table = pa.Table.from_pandas(model_input, preserve_index=False)
        scores = self.model.predict(self.model.collate(self.transforms.transform(table)), tasks)
        return pd.DataFrame({f"{SCORE_PREFIX}{task}": list(values.numpy()) if values.ndim > 1 else values.numpy()
                             for task, values in scores.items()})


mlflow.models.set_model(GRecPyfuncModel())
