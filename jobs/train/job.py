"""`run_training`: the driver of a training run. Validates the config before Ray starts, opens the
MLflow run, runs the Ray Train TorchTrainer with progress on the console, then turns the best
checkpoint into a plain model, logs the plots and registers the model with alias `challenger`."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from jobs.train.checkpointing import TrainerState
from jobs.train.config import ConfigError, ResolvedConfig, TrainConfig, load_config, resolve
from jobs.train.data import DATA_PIPELINE_CPUS, split_files
from jobs.train.progress import ProgressSnapshot

logger = logging.getLogger(__name__)

RAY_RESULTS_DIR = "ray_results"
# Raw validation rows from which the registered model's signature takes its column types.
SAMPLE_ROWS = 64


@dataclass(frozen=True)
class TrainingResult:
    run_id: str
    model_name: str
    model_version: str
    metrics: dict[str, float]  # validation metrics of the registered (best) epoch
    best_epoch: int
    epochs_run: int
    checkpoint_path: str
    worker_restarts: int
    history: list[dict[str, Any]] = field(default_factory=list)


def run_training(config: TrainConfig | str | Path, *, show_progress: bool = True,
                 listeners: tuple[Callable[[ProgressSnapshot], None], ...] = ()) -> TrainingResult:
    """Trains, tracks and registers a model. `config` is a TrainConfig or a YAML path. `listeners`
    receive progress snapshots on the driver (about twice a second) while training runs."""
    from jobs.ray_runtime import ray_session
    from registry.tracking import use_tracking_uri

    if not isinstance(config, TrainConfig):
        config = load_config(config)
    resolved = resolve(config)  # every configuration error surfaces here, before any cluster starts
    scaling = config.scaling
    local_cpus = max(_machine_cpus(), math.ceil(scaling.num_workers * scaling.cpus_per_worker + DATA_PIPELINE_CPUS))
    with use_tracking_uri(config.mlflow.tracking_uri) as tracking_uri, \
            ray_session(scaling.address, num_cpus=local_cpus):
        _check_cluster_fits(config)
        return _train_and_register(resolved, tracking_uri, show_progress, listeners)


def _train_and_register(resolved: ResolvedConfig, tracking_uri: str, show_progress: bool,
                        listeners: tuple[Callable[[ProgressSnapshot], None], ...]) -> TrainingResult:
    import ray
    from mlflow import MlflowClient

    from registry.tracking import ensure_experiment

    config = resolved.config
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, config.mlflow.experiment, tracking_uri)
    run = client.create_run(experiment_id, run_name=config.mlflow.run_name,
                            tags={"grec.job": "train", "grec.dataset": str(resolved.dataset_dir)})
    run_id = run.info.run_id
    try:
        _log_inputs(client, run_id, resolved)
        board = _progress_board()
        result = _fit(resolved, tracking_uri, run_id, board, show_progress, listeners)
        restarts = max(0, ray.get(board.get.remote()).worker_starts - config.scaling.num_workers)
        outcome = _register(resolved, client, run_id, result, restarts)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return outcome


def _progress_board():
    from jobs.train.progress import ProgressBoard

    return ProgressBoard.remote()


def _fit(resolved: ResolvedConfig, tracking_uri: str, run_id: str, board: Any, show_progress: bool,
         listeners: tuple[Callable[[ProgressSnapshot], None], ...]):
    """Runs the TorchTrainer in a thread while the main thread shows progress; returns Ray's Result."""
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.train.data import transformed_split
    from jobs.train.progress import watch
    from jobs.train.worker import WorkerJob, train_loop_per_worker

    config = resolved.config
    scaling, stopping = config.scaling, config.training.early_stopping
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver draws its own
    context.execution_options.preserve_order = True  # same shards, same order: resumable epochs
    storage = scaling.storage_path or str((Path.cwd() / ".grec" / RAY_RESULTS_DIR).resolve())
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=WorkerJob(resolved, tracking_uri, run_id, board),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker={"CPU": scaling.cpus_per_worker}),
        run_config=RunConfig(
            name=f"grec-train-{run_id}", storage_path=storage,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=scaling.checkpoints_to_keep,
                                               checkpoint_score_attribute=stopping.metric,
                                               checkpoint_score_order=stopping.mode),
        ),
        datasets={"train": transformed_split(resolved.dataset_dir, config.dataset.train_split),
                  "validation": transformed_split(resolved.dataset_dir, config.dataset.validation_split)},
    )
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 (re-raised on the main thread)
            outcome["error"] = err
        finally:
            done.set()

    thread = threading.Thread(target=fit, name="grec-train-fit", daemon=True)
    thread.start()
    watch(board, done, config.training.epochs, _steps_per_epoch(resolved), show=show_progress, listeners=listeners)
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    result = outcome["result"]
    if result.error is not None:
        raise result.error
    return result


def _register(resolved: ResolvedConfig, client, run_id: str, result, restarts: int) -> TrainingResult:
    from registry.models import CHALLENGER, register_model
    from jobs.train.export import model_from_checkpoint

    config = resolved.config
    stopping = config.training.early_stopping
    best_checkpoint, best_metrics = _best(result.best_checkpoints, stopping.metric, stopping.mode)
    with result.checkpoint.as_directory() as latest:
        state = TrainerState.load(Path(latest))
    with best_checkpoint.as_directory() as directory:
        model = model_from_checkpoint(directory, resolved)
    best_epoch = int(best_metrics["epoch"])
    best_record = next(h for h in state.history if h["epoch"] == best_epoch)
    sample = _validation_sample(resolved)
    _log_plots(client, run_id, resolved, model, state.history, best_record)
    version = register_model(model, resolved.dataset_dir, config.mlflow.registered_model, sample.to_pandas(),
                             run_id=run_id, alias=CHALLENGER, client=client)
    for name, value in best_record["metrics"].items():
        client.log_metric(run_id, f"best/{name}", value)
    return TrainingResult(run_id=run_id, model_name=config.mlflow.registered_model, model_version=str(version.version),
                          metrics=dict(best_record["metrics"]), best_epoch=best_epoch,
                          epochs_run=state.epoch + 1, checkpoint_path=best_checkpoint.path,
                          worker_restarts=restarts, history=state.history)


def _best(checkpoints: list, metric: str, mode: str):
    scored = [(c, m) for c, m in checkpoints if metric in m and m[metric] == m[metric]]
    if not scored:
        raise RuntimeError(f"no checkpoint reported a value of {metric!r}")
    pick = min if mode == "min" else max
    return pick(scored, key=lambda cm: cm[1][metric])


def _log_inputs(client, run_id: str, resolved: ResolvedConfig) -> None:
    """Config and parameters, the dataset spec and the fitted transforms."""
    from registry.tracking import flatten_params

    config = resolved.config
    model = {k: v for k, v in resolved.model_config.to_dict().items() if k != "input"}  # input: the spec artifact
    params = flatten_params({**config.model_dump(mode="json"), "model": model})
    params["sparse.path"] = "dmp" if resolved.sharded else "engine"
    client.log_batch(run_id, params=[_param(k, v) for k, v in sorted(params.items())])
    client.log_dict(run_id, config.model_dump(mode="json"), "config/train_config.json")
    client.log_dict(run_id, resolved.model_config.to_dict(), "config/model_config.json")
    for name in ("transforms.json", "dataset_spec.json", "definition.json"):
        client.log_artifact(run_id, str(resolved.dataset_dir / name), "transforms")


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


def _log_plots(client, run_id: str, resolved: ResolvedConfig, model, history: list[dict[str, Any]],
               best_record: dict[str, Any]) -> None:
    """Loss curves, validation metrics per task, C-Poly allocation heatmaps, expert load per task."""
    import matplotlib.pyplot as plt

    from jobs.train import plots

    steps = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/step_loss")]
    figures = {"plots/loss_curves.png": plots.loss_curves(steps, history),
               "plots/validation_metrics.png": plots.validation_metrics(history, resolved.task_names)}
    matrices = getattr(model, "allocation_matrices", lambda: {})()
    if matrices:
        figures["plots/cpoly_allocation.png"] = plots.allocation_heatmaps(
            {name: m.numpy() for name, m in matrices.items()}, model.task_names)
    if any(any(row) for row in best_record.get("expert_load", [])):
        figures["plots/expert_load.png"] = plots.expert_load(best_record["expert_load"], resolved.task_names)
    for path, figure in figures.items():
        client.log_figure(run_id, figure, path)
        plt.close(figure)


def _validation_sample(resolved: ResolvedConfig):
    """The first SAMPLE_ROWS raw validation rows (read from the first file only)."""
    first = split_files(resolved.dataset_dir, resolved.config.dataset.validation_split)[0]
    return pq.ParquetFile(first).read_row_group(0).slice(0, SAMPLE_ROWS)


def _steps_per_epoch(resolved: ResolvedConfig) -> int:
    """From the Parquet footers (no rows read): ceil(rows / workers / batch)."""
    files = split_files(resolved.dataset_dir, resolved.config.dataset.train_split)
    rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    scaling = resolved.config.scaling
    return max(1, math.ceil(rows / scaling.num_workers / resolved.config.training.batch_size))


def _machine_cpus() -> int:
    import os

    return os.cpu_count() or 1


def _check_cluster_fits(config: TrainConfig) -> None:
    """The workers plus the data pipeline must fit, or the job would wait for resources forever."""
    import ray

    scaling = config.scaling
    available = ray.cluster_resources()
    need = scaling.num_workers * scaling.cpus_per_worker + DATA_PIPELINE_CPUS
    if available.get("CPU", 0) < need:
        raise ConfigError(f"scaling: {scaling.num_workers} workers x {scaling.cpus_per_worker} CPU plus "
                          f"{DATA_PIPELINE_CPUS} CPU for the data pipeline need {need} CPUs; the cluster has "
                          f"{available.get('CPU', 0)} (lower scaling.cpus_per_worker or num_workers)")
    if scaling.use_gpu and available.get("GPU", 0) < scaling.num_workers:
        raise ConfigError(f"scaling.use_gpu: {scaling.num_workers} workers need a GPU each; the cluster has "
                          f"{available.get('GPU', 0)}")
