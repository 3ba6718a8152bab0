"""`grec predict`: batch prediction of a registered model over a split of a prepared dataset, with
Ray Data, into one Parquet file: the raw user/item keys and one `score_<task>` column per task.

The file is written next to its destination under a temporary name and renamed when complete, so
readers never see a half-written file."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from feature_store.storage import location_of
from jobs.evaluate.inference import InferenceOptions, score_column, score_dataset
from jobs.evaluate.job import prepare_evaluation, read_split_rows
from jobs.ray_runtime import ray_session


@dataclass(frozen=True)
class PredictionSummary:
    path: Path
    rows: int
    columns: list[str]
    model_name: str
    model_version: str


def predict_to_parquet(model_uri: str, data_dir: str | Path, out_path: str | Path, *, split: str = "test",
                       tracking_uri: str | None = None, address: str | None = None,
                       options: InferenceOptions | None = None) -> PredictionSummary:
    """Scores every row of `split` of the dataset at `data_dir` (a directory or a URI, read where it
    is) and writes `out_path` (Parquet). The split needs no labels. Model and data are checked before
    Ray starts (or is joined at `address`)."""
    out = Path(out_path)
    if out.suffix != ".parquet":
        raise ValueError(f"--out must name a .parquet file, got {out}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; name a file such as {out / 'predictions.parquet'}")
    model, prepared = prepare_evaluation(model_uri, data_dir, split, labels=False)
    keys = [k for k in (model.spec.user_id, model.spec.item_id) if k]
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{uuid.uuid4().hex}.partial")
    writer, rows = None, 0
    try:
        with ray_session(address):
            scored = score_dataset(read_split_rows(prepared, split), model.pinned_uri, tracking_uri, keys,
                                   options or InferenceOptions())
            for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
                if writer is None:
                    writer = pq.ParquetWriter(partial, batch.schema)
                writer.write_table(batch)
                rows += batch.num_rows
        if writer is None:
            raise ValueError(f"{location_of(prepared)}: split {split!r} holds no rows")
        writer.close()
        writer = None
        os.replace(partial, out)
    finally:
        if writer is not None:
            writer.close()
        partial.unlink(missing_ok=True)
    columns = [*keys, *(score_column(t) for t in model.spec.task_names)]
    return PredictionSummary(out, rows, columns, model.name, model.version)
