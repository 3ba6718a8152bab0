"""`evaluate_model`: score a registered model on a split of a prepared dataset with Ray Data, compute
per-task metrics with intervals, slices and leave-last-out ranking, write the report (by default
under .grec/reports/) and log it to the model version's MLflow run.

Nothing the driver holds grows with the number of events: Ray Data reads and scores the split in
bounded blocks and the driver keeps the scored rows of at most HELD_ROWS rows' worth of users
(jobs/evaluate/sample.py); the train split's user activity and the ranking inputs (each user's latest
positive, each item's latest item side, the seen items of the ranked users) are folded batch by
batch, growing with users and items only.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.options import SPLITS
from feature_store.prepare import PreparedDataset
from feature_store.storage import location_of, open_dataset, parquet_dataset, parquet_source, split_files
from feature_store.transforms import TransformSet
from grec import InputSpec, TaskSpec
from jobs.evaluate import candidates as cand
from jobs.evaluate.compatibility import check_compatible
from jobs.evaluate.compute import metrics_with_intervals, ranking_metrics, slice_metrics
from jobs.evaluate.inference import InferenceOptions, arrow_to_scores, score_column, score_dataset
from jobs.metrics import positive_rank
from jobs.evaluate.recommend import RecommendEvalConfig, evaluate_recommend
from jobs.evaluate.report import TaskPredictions, write_report
from jobs.evaluate.results import EvaluationResult, TaskEvaluation
from jobs.evaluate.sample import UserSample
from jobs.evaluate.slices import UserActivity, user_slices
from jobs.ray_runtime import ray_session
from registry.tracking import GREC_DIR, named_tracking_uri

logger = logging.getLogger(__name__)

# Task kinds ranked leave-last-out: a binary task's positive rows are the interactions to recover.
RANKED_KINDS = ("binary",)
# Why an implicit-feedback task has no pointwise metrics in the report.
IMPLICIT_TASK = ("implicit feedback: every labelled row is a positive, so pointwise metrics say nothing; the "
                 "top-N evaluation judges the task's lists")
# Where reports go without --out: .grec/reports/<name>-v<version>-<split> under the working directory.
REPORTS_DIR = Path(GREC_DIR) / "reports"
# Scored rows the driver holds for metrics, intervals, slices, plots and the promotion gate: every row
# of a split up to this size, else the rows of a hashed sample of users (about 60 bytes a row for three
# tasks, so ~120 MB, plus the bootstrap's copies of one task's arrays).
HELD_ROWS = 2_000_000
# Rows per batch of the driver's ordered scans of a split (a few columns each).
SCAN_BATCH_ROWS = 1 << 20
# Rows per batch of a scan of every column (about 300 bytes a row on the synthetic dataset).
WHOLE_ROW_BATCH_ROWS = 1 << 16


@dataclass(frozen=True)
class EvaluationConfig:
    split: str = "test"
    resamples: int = 200  # bootstrap draws; 0: no intervals
    confidence: float = 0.95
    ranking_users: int = 300  # users per binary task in leave-last-out ranking; 0: no ranking
    negatives: int = 99
    ks: tuple[int, ...] = (5, 10)
    activity_buckets: int = 3
    seed: int = 0
    inference: InferenceOptions = field(default_factory=InferenceOptions)
    recommend: RecommendEvalConfig | None = None  # replay /v1/recommend (jobs/evaluate/recommend.py)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        for name in ("resamples", "ranking_users"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.negatives < 1:
            raise ValueError(f"negatives must be >= 1, got {self.negatives}")
        if not self.ks or any(k < 1 or k > self.negatives + 1 for k in self.ks):
            raise ValueError(f"ks must be cutoffs in 1..negatives+1 ({self.negatives + 1}), got {self.ks}")


@dataclass(frozen=True)
class ResolvedModel:
    """What the driver knows about the model before any Ray work."""

    uri: str
    name: str
    version: str
    spec: InputSpec
    transforms: TransformSet

    @property
    def pinned_uri(self) -> str:
        """The resolved version: Ray workers load exactly it even if the alias moves meanwhile."""
        return f"models:/{self.name}/{self.version}"


def prepare_evaluation(model_uri: str, data_dir: str | Path, split: str, *,
                       labels: bool = True) -> tuple[ResolvedModel, PreparedDataset]:
    """Loads the model's metadata and checks it against the dataset (tasks too when `labels`): fails
    before any work starts. `data_dir`: a prepared dataset's directory or URI (read where it is)."""
    from mlflow.exceptions import MlflowException

    from registry.models import load_registered

    prepared = open_dataset(data_dir)
    try:
        loaded = load_registered(model_uri)
    except MlflowException as err:  # e.g. a version that does not exist: bad input, not a crash
        raise ValueError(f"cannot load {model_uri} from the MLflow registry: {err.message}") from None
    # the model's own spec: its tasks may be a subset of the dataset spec it was trained from
    model = ResolvedModel(model_uri, loaded.name, str(loaded.version), loaded.model.config.input, loaded.transforms)
    files = split_files(location_of(prepared), split)
    if not files:
        raise ValueError(f"{location_of(prepared)}: split {split!r} holds no rows")
    schema = parquet_dataset(files).schema
    data_spec = InputSpec.from_dict(prepared.spec())
    check_compatible(model_uri, model.spec, loaded.transforms, data_spec, schema, location_of(prepared),
                     labels=labels)
    return model, prepared


@dataclass(frozen=True)
class ScoredSplit:
    """A model's scores of every row of a split: keys, labels and `score_<task>` columns, rows in
    key order (user, item, time), so two models' scores of one split line up row by row."""

    model: ResolvedModel
    split: str
    rows: pa.Table
    rows_scored: int  # every row of the split; `rows` holds them all up to HELD_ROWS

    def task_arrays(self, task: TaskSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(indices of the rows labeled for `task`, their labels, their scores)."""
        return _task_arrays(self.rows, task)


def row_keys(spec: InputSpec) -> list[str]:
    """The columns that identify a row of a split (duplicates of (user, item, time) are dropped
    when the training set is built)."""
    return [name for name in (spec.user_id, spec.item_id, spec.timestamp) if name]


def read_split_rows(prepared: PreparedDataset, split: str):
    """A lazy Ray Dataset of the split's raw rows, read where the dataset is: a dataset at a URI
    through its store's filesystem, so the read tasks run on any node of a cluster (a local
    directory must be one every node sees). Read in bounded blocks by tasks that declare their
    memory, as training reads (jobs/train/data.py)."""
    import ray.data

    from jobs.train.data import READ_AHEAD_BATCHES, read_plan

    location = location_of(prepared)
    plan = read_plan(location, split)
    paths, fs = parquet_source(split_files(location, split))
    # partitioning=None: the `split=` folder is no column of the rows.
    dataset = ray.data.read_parquet(paths, filesystem=fs, partitioning=None, memory=plan.task_memory,
                                    batch_size=plan.batch_rows, batch_readahead=READ_AHEAD_BATCHES)
    # Order preserved: Ray Data's Parquet reader reads a task's files one after another then, and all
    # at once otherwise (a task of several files held each one's row group: 558 MiB against 428 MiB
    # in order, the 3M-event benchmark's test split), beyond what the plan declares. The rows are
    # put in key order after scoring anyway.
    dataset.context.execution_options.preserve_order = True
    return dataset


def score_split(model: ResolvedModel, prepared: PreparedDataset, split: str, tracking_uri: str | None,
                options: InferenceOptions) -> ScoredSplit:
    """Every row of the split scored by Ray Data; the driver keeps the rows of HELD_ROWS' worth of
    users (all of a smaller split), in key order (Ray Data's output order is not the input's)."""
    spec = model.spec
    keys = row_keys(spec)
    keep = [*keys, *(t.label for t in spec.tasks)]
    sample = UserSample(spec.user_id or spec.item_id, HELD_ROWS)
    scored = score_dataset(read_split_rows(prepared, split), model.pinned_uri, tracking_uri, keep, options)
    for batch in scored.iter_batches(batch_format="pyarrow", batch_size=None):
        sample.add(batch)
    if sample.sampled:
        logger.info("%s: %d of the %d scored rows held for metrics (the rows of a hashed sample of users)",
                    split, sample.table().num_rows, sample.rows_seen)
    return ScoredSplit(model, split, sample.table().sort_by([(k, "ascending") for k in keys]), sample.rows_seen)


def train_activity(prepared: PreparedDataset, user_key: str) -> UserActivity:
    """Each user's number of train rows, folded over the train split's user column."""
    activity = UserActivity.of(np.zeros(0))
    for batch in prepared.iter_split("train", columns=[user_key], batch_size=SCAN_BATCH_ROWS):
        activity = activity.merged(batch.column(0).to_numpy(zero_copy_only=False))
    return activity


# What evaluation records, in the result's settings, when per-user metrics are skipped.
ONE_ROW_PER_USER = ("every user of the split has one row and none in the train split: GAUC, user slices and "
                    "leave-last-out ranking would measure nothing, so they are skipped")


def one_row_per_user(users: np.ndarray, train_users: np.ndarray | None) -> bool:
    """Every user of the evaluated rows has exactly one of them and no train row (Adult, Women's
    Clothing: each row is its own user), so no per-user metric can mean anything."""
    if len(users) == 0 or len(np.unique(users)) != len(users):
        return False
    return train_users is None or not np.isin(users, train_users).any()


def _collect(dataset) -> pa.Table:
    tables = [batch for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None)]
    return pa.concat_tables(tables) if tables else pa.table({})


def _ordered_batches(prepared: PreparedDataset, splits: tuple[str, ...], columns: list[str] | None,
                     batch_rows: int = SCAN_BATCH_ROWS):
    """(row number of the batch's first row, batch) over `splits` in order. The ranking inputs' tie
    rules (the later of two rows at one time) follow this order, so it is a driver-side scan in file
    order rather than Ray Data's, whose blocks carry no row numbers."""
    offset = 0
    for split in splits:
        for batch in prepared.iter_split(split, columns=columns, batch_size=batch_rows):
            yield offset, batch
            offset += batch.num_rows


def _rows_numbered(prepared: PreparedDataset, split: str, numbers: np.ndarray) -> pa.Table:
    """The rows of `split` at the (sorted) row `numbers`, every column."""
    taken = []
    for offset, batch in _ordered_batches(prepared, (split,), None, WHOLE_ROW_BATCH_ROWS):
        inside = numbers[(numbers >= offset) & (numbers < offset + batch.num_rows)]
        if len(inside):
            taken.append(batch.take(pa.array(inside - offset)))
    return pa.concat_tables(taken)


def _ranking_candidates(model: ResolvedModel, prepared: PreparedDataset, config: EvaluationConfig) -> tuple[pa.Table | None, dict[str, int]]:
    """Candidate rows of every binary task, and the users ranked per task. Three scans: the split's
    latest positives per user, the chosen rows whole, and every split for the catalogue and the
    chosen users' seen items."""
    spec = model.spec
    tasks = [t for t in spec.tasks if t.kind in RANKED_KINDS]
    if config.ranking_users == 0 or not tasks or not spec.user_id or not spec.item_id or not spec.timestamp:
        return None, {}
    latest = {t.name: cand.LatestPositives(spec, t.label) for t in tasks}
    for offset, batch in _ordered_batches(prepared, (config.split,), [spec.user_id, spec.timestamp,
                                                                       *(t.label for t in tasks)]):
        for fold in latest.values():
            fold.add(batch, offset)
    held = {}
    for index, task in enumerate(tasks):
        numbers = latest[task.name].chosen(config.ranking_users, config.seed + index)
        if len(numbers):
            held[task.name] = _rows_numbered(prepared, config.split, numbers)
    if not held:
        return None, {}
    ranked_users = pa.concat_tables([rows.select([spec.user_id]) for rows in held.values()]).column(0).unique()
    catalogue, seen = cand.LatestItems(spec), []
    for offset, batch in _ordered_batches(prepared, SPLITS, cand.item_side_columns(spec) + [spec.user_id,
                                                                                          spec.timestamp]):
        catalogue.add(batch)
        seen.append(batch.select([spec.user_id, spec.item_id]).filter(pc.is_in(batch.column(spec.user_id),
                                                                               ranked_users)))
    interactions = pa.concat_tables(seen)
    tables, users = [], {}
    for index, task in enumerate(tasks):
        if task.name not in held:  # no positive row: no user to rank
            users[task.name] = 0
            continue
        built = cand.build_candidates(task.name, held[task.name], catalogue.table(), interactions,
                                      spec, config.negatives, config.seed + index)
        if built.skipped_users:
            logger.info("ranking %s: %d users skipped (fewer than %d never-seen items)", task.name,
                        built.skipped_users, config.negatives)
        users[task.name] = built.users
        if built.users:
            tables.append(built.rows)
    return (pa.concat_tables(tables) if tables else None), users


def _positive_ranks(scored: pa.Table, task: str, negatives: int) -> np.ndarray:
    mine = scored.filter(pc.equal(scored.column(cand.TASK), task))
    if mine.num_rows == 0:
        return np.zeros(0, dtype=np.int64)
    matrix = cand.score_matrix(mine.column(cand.GROUP).to_numpy(), mine.column(cand.POSITION).to_numpy(),
                               arrow_to_scores(mine.column(score_column(task))), negatives)
    return positive_rank(matrix)


def _labeled_rows(column: pa.ChunkedArray, kind: str) -> np.ndarray:
    """Rows that have a label for the task (missing: null, NaN, or a negative class id), as the
    model's losses leave them out too."""
    valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
    values = pc.fill_null(column, 0).to_numpy().astype(np.float64)
    return valid & ~np.isnan(values) & ((values >= 0) if kind == "multiclass" else True)


def _task_arrays(scored: pa.Table, task: TaskSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labeled = _labeled_rows(scored.column(task.label), task.kind)
    labels = pc.fill_null(scored.column(task.label), 0).to_numpy().astype(
        np.int64 if task.kind == "multiclass" else np.float64)[labeled]
    return np.flatnonzero(labeled), labels, arrow_to_scores(scored.column(score_column(task.name)))[labeled]


def evaluate_scores(model: ResolvedModel, dataset_name: str, scored: pa.Table, config: EvaluationConfig, *,
                    train_activity: UserActivity | None = None, ranking_scored: pa.Table | None = None,
                    ranking_users: dict[str, int] | None = None,
                    rows_scored: int | None = None) -> tuple[EvaluationResult, dict[str, TaskPredictions]]:
    """Metrics of scored rows: per task with intervals; slices when `train_activity` is given; ranking
    when candidates were scored. `rows_scored`: the split's rows when `scored` holds a sample of them."""
    spec = model.spec
    users = scored.column(spec.user_id).to_numpy(zero_copy_only=False) if spec.user_id else None
    skipped = {}
    if users is not None and one_row_per_user(users, None if train_activity is None else train_activity.users):
        users, train_activity, skipped = None, None, {"per_user_metrics": ONE_ROW_PER_USER}
    slices = user_slices(users, train_activity, activity_buckets=config.activity_buckets) \
        if users is not None and train_activity is not None else {}
    tasks, predictions = [], {}
    for index, task in enumerate(spec.tasks):
        if task.implicit:
            skipped[f"task {task.name}"] = IMPLICIT_TASK
            continue
        labeled, labels, values = _task_arrays(scored, task)
        task_users = None if users is None else users[labeled]
        predictions[task.name] = TaskPredictions(labels, values)
        evaluation = TaskEvaluation(
            task.name, task.kind, task.role, len(labels),
            metrics_with_intervals(task.kind, labels, values, task_users, resamples=config.resamples,
                                   confidence=config.confidence, seed=config.seed + index),
            slice_metrics(task.kind, labels, values, task_users, {k: m[labeled] for k, m in slices.items()})
            if slices else {},
        )
        if ranking_scored is not None and task.name in (ranking_users or {}):
            ranks = _positive_ranks(ranking_scored, task.name, config.negatives)
            evaluation.ranking = ranking_metrics(ranks, config.ks, resamples=config.resamples,
                                                 confidence=config.confidence, seed=config.seed + index)
            evaluation.ranking_users = len(ranks)
        tasks.append(evaluation)
    settings = {"resamples": config.resamples, "confidence": config.confidence, "negatives": config.negatives,
                "ks": list(config.ks), "ranking_users": config.ranking_users, "seed": config.seed,
                **({"skipped": skipped} if skipped else {})}
    if rows_scored is not None and rows_scored > scored.num_rows:
        settings["held_rows"] = held_rows_note(scored.num_rows, rows_scored)
    result = EvaluationResult(model.uri, model.name, model.version, dataset_name, config.split,
                              scored.num_rows if rows_scored is None else rows_scored, tasks, settings)
    return result, predictions


def held_rows_note(held: int, scored: int) -> str:
    """What the report says when the metrics come from a sample of the scored rows."""
    return (f"metrics, intervals and slices over the {held} rows of a hashed sample of users ({held / scored:.1%} "
            f"of the {scored} rows scored): evaluation holds at most {HELD_ROWS} rows")


@dataclass(frozen=True)
class EvaluationOutcome:
    result: EvaluationResult
    report: Path
    scored: ScoredSplit  # the row scores behind the result (promotion reuses them)


def evaluate_model(model_uri: str, data_dir: str | Path, config: EvaluationConfig | None = None, *,
                   tracking_uri: str | None = None, address: str | None = None,
                   report_dir: str | Path | None = None, log_to_mlflow: bool = True) -> EvaluationOutcome:
    """Evaluates a registered model on a split: checks model and data first, then starts (or joins)
    Ray at `address` for the scoring. See `run_evaluation`."""
    config = config or EvaluationConfig()
    with named_tracking_uri(tracking_uri):
        model, prepared = prepare_evaluation(model_uri, data_dir, config.split)
        with ray_session(address):
            return run_evaluation(model, prepared, config, tracking_uri=tracking_uri, report_dir=report_dir,
                                  log_to_mlflow=log_to_mlflow)


def run_evaluation(model: ResolvedModel, prepared: PreparedDataset, config: EvaluationConfig, *,
                   tracking_uri: str | None = None, report_dir: str | Path | None = None,
                   log_to_mlflow: bool = True) -> EvaluationOutcome:
    """Scores and measures a checked model (Ray running), writes the report into `report_dir`
    (default .grec/reports/<name>-v<version>-<split>) and logs it."""
    dataset_name = prepared.spec()["name"]
    scored = score_split(model, prepared, config.split, tracking_uri, config.inference)
    activity = train_activity(prepared, model.spec.user_id) if model.spec.user_id else None
    ranking_rows, ranked_users = None, {}
    per_user = not (model.spec.user_id and one_row_per_user(
        scored.rows.column(model.spec.user_id).to_numpy(zero_copy_only=False), activity.users))
    if not per_user:
        logger.info("per-user metrics skipped: %s", ONE_ROW_PER_USER)
    else:
        ranking_rows, ranked_users = _ranking_candidates(model, prepared, config)
    ranking_scored = None
    if ranking_rows is not None:
        import ray.data

        ranking_scored = _collect(score_dataset(ray.data.from_arrow(ranking_rows), model.pinned_uri, tracking_uri,
                                                [cand.GROUP, cand.POSITION, cand.TASK], config.inference))
    result, predictions = evaluate_scores(model, dataset_name, scored.rows, config, train_activity=activity,
                                          ranking_scored=ranking_scored, ranking_users=ranked_users,
                                          rows_scored=scored.rows_scored)
    if config.recommend is not None and per_user:
        result.recommend = replay_recommend(model, prepared, config.split, config.recommend)
    out = Path(report_dir) if report_dir else REPORTS_DIR / f"{model.name}-v{model.version}-{config.split}"
    report = write_report(result, predictions, out)
    if log_to_mlflow:
        log_evaluation(result, report.parent)
    return EvaluationOutcome(result, report, scored)


def replay_recommend(model: ResolvedModel, prepared: PreparedDataset, split: str,
                     config: RecommendEvalConfig) -> dict:
    """The top-N evaluation of the version's lists (jobs/evaluate/recommend.py), or {} (and why,
    logged) when the data or the version cannot have one."""
    from registry.models import load_registered
    from registry.retrieval_index import load_recommendation_stage

    if split == "train" or not (model.spec.user_id and model.spec.item_id and model.spec.timestamp):
        logger.info("top-N evaluation skipped: it needs users, items, timestamps and a split after training")
        return {}
    stage = load_recommendation_stage(model.name, model.version)
    if stage is None:
        logger.info("top-N evaluation skipped: %s version %s has no recommendation stage; build it with "
                    "`grec build-index --model %s --data DIR`", model.name, model.version, model.pinned_uri)
        return {}
    return evaluate_recommend(load_registered(model.pinned_uri), stage, prepared, split, config)


def log_evaluation(result: EvaluationResult, report_dir: Path) -> str:
    """Logs metrics (`eval_<split>_<task>_<metric>`) and the report directory (artifacts under
    `evaluation/<split>`) to the run that produced the model version; returns that run's id."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = client.get_model_version(result.model_name, result.model_version).run_id
    if not run_id:
        raise ValueError(f"model {result.model_name} version {result.model_version} has no MLflow run to log to")
    for key, value in result.flat_metrics(prefix=f"eval_{result.split}_").items():
        if math.isfinite(value):
            client.log_metric(run_id, key, value)
    client.set_tag(run_id, f"evaluation.{result.split}.dataset", result.dataset)
    client.log_artifacts(run_id, str(report_dir), artifact_path=f"evaluation/{result.split}")
    return run_id
