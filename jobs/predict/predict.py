"""`grec predict`: batch prediction of a registered model over a split of a prepared dataset, with
Ray Data, into one Parquet file: the raw user/item keys and one `score_<task>` column per task.

The file is written next to its destination under a temporary name and renamed when complete, so
readers never see a half-written file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from feature_store.atomic import write_parquet_atomically
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


def parquet_out(out_path: str | Path, example: str) -> Path:
    """--out of a batch job: a .parquet file name, not a directory (`example`: a name to suggest)."""
    out = Path(out_path)
    if out.suffix != ".parquet":
        raise ValueError(f"--out must name a .parquet file, got {out}")
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory; name a file such as {out / example}")
    return out


def predict_to_parquet(model_uri: str, data_dir: str | Path, out_path: str | Path, *, split: str = "test",
                       tracking_uri: str | None = None, address: str | None = None,
                       options: InferenceOptions | None = None) -> PredictionSummary:
    """Scores every row of `split` of the dataset at `data_dir` (a directory or a URI, read where it
    is) and writes `out_path` (Parquet). The split needs no labels. Model and data are checked before
    Ray starts (or is joined at `address`)."""
    out = parquet_out(out_path, "predictions.parquet")
    model, prepared = prepare_evaluation(model_uri, data_dir, split, labels=False)
    keys = [k for k in (model.spec.user_id, model.spec.item_id) if k]
    with ray_session(address):
        scored = score_dataset(read_split_rows(prepared, split), model.pinned_uri, tracking_uri, keys,
                               options or InferenceOptions())
        rows = write_parquet_atomically(out, scored.iter_batches(batch_format="pyarrow", batch_size=None),
                                        empty=f"{location_of(prepared)}: split {split!r} holds no rows")
    columns = [*keys, *(score_column(t) for t in model.spec.task_names)]
    return PredictionSummary(out, rows, columns, model.name, model.version)
