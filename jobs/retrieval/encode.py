"""The frozen model's tokens for the two-tower head, computed with Ray Data: `map_batches` over a
pool of actors, each loading the registered model once (batch inference's helpers,
jobs/evaluate/inference.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from grec.retrieval import RetrievalInputs, example_inputs
from jobs.evaluate.inference import InferenceOptions, arrow_to_scores, load_in_actor, map_with_model, tensor_to_arrow

USER_TOKENS, ITEM_TOKENS, ITEM, HISTORY = "user_tokens", "item_tokens", "item", "history"


class RetrievalEncoder:
    """A Ray Data callable class: raw rows -> the towers' inputs (see grec.retrieval.example_inputs)
    as columns, plus `keep_columns`."""

    def __init__(self, model_uri: str, tracking_uri: str, keep_columns: Sequence[str], torch_threads: int = 1) -> None:
        loaded = load_in_actor(model_uri, tracking_uri, torch_threads)
        self.model = loaded.model
        self.transforms = loaded.transforms
        self.keep_columns = list(keep_columns)

    def __call__(self, batch: pa.Table) -> pa.Table:
        inputs = example_inputs(self.model, self.model.collate(self.transforms.transform(batch)))
        out = {name: batch.column(name) for name in self.keep_columns}
        out[USER_TOKENS] = tensor_to_arrow(inputs.user_tokens)
        out[ITEM_TOKENS] = tensor_to_arrow(inputs.item_tokens)
        out[ITEM] = tensor_to_arrow(inputs.items)
        if inputs.history is not None:
            out[HISTORY] = tensor_to_arrow(inputs.history)
        return pa.table(out)


def encode_rows(rows: pa.Table, model_uri: str, tracking_uri: str | None, options: InferenceOptions) -> RetrievalInputs:
    """The towers' inputs of every row, in the rows' order (Ray running)."""
    import ray.data

    order = "_row"
    dataset = ray.data.from_arrow(rows.append_column(order, pa.array(np.arange(rows.num_rows))))
    encoded = map_with_model(dataset, RetrievalEncoder, model_uri, tracking_uri, options, keep_columns=[order])
    table = pa.concat_tables(list(encoded.iter_batches(batch_format="pyarrow", batch_size=None))).sort_by(order)

    def tensor(name: str) -> torch.Tensor:  # a copy: Arrow's buffers are read-only
        return torch.from_numpy(np.array(arrow_to_scores(table.column(name))))

    history = tensor(HISTORY) if HISTORY in table.column_names else None
    return RetrievalInputs(tensor(USER_TOKENS), tensor(ITEM_TOKENS), tensor(ITEM).long(), history)
