"""`run_training`: the driver of a training run. Validates the config (and, on a cluster, that the
address answers and checkpoints have shared storage) before Ray starts, opens the MLflow run, runs
the Ray Train TorchTrainer with progress on the console (worker-group failures included: printed
with what is left of `scaling.max_failures`, and `train/restarts` in MLflow), then turns the best
checkpoint into a plain model, logs the plots and registers the model with alias `challenger`.
`build_trainer` is that TorchTrainer, which each `grec tune` trial fits too (jobs/tune/job.py)."""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jobs.train.checkpointing import TrainerState
from jobs.train.config import (
    ConfigError,
    ResolvedConfig,
    ScalingSection,
    TrainConfig,
    cluster_address,
    load_config,
    resolve,
)
from jobs.train.data import DATA_PIPELINE_CPUS, ReadPlan, split_dataset
from jobs.train.progress import ProgressSnapshot

if TYPE_CHECKING:
    from jobs.train.worker import TrainingExtension

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
                 listeners: tuple[Callable[[ProgressSnapshot], None], ...] = (),
                 extension: TrainingExtension | None = None) -> TrainingResult:
    """Trains, tracks and registers a model. `config` is a TrainConfig or a YAML path. `listeners`
    receive progress snapshots on the driver (about twice a second) while training runs;
    `extension` adds to the objective (jobs/train/worker.py: TrainingExtension)."""
    from jobs.ray_runtime import RayAddressError, check_ray_address, ray_session
    from registry.tracking import use_tracking_uri

    if not isinstance(config, TrainConfig):
        config = load_config(config)
    if address := cluster_address(config):
        try:
            check_ray_address(address)
        except RayAddressError as err:
            raise ConfigError(f"scaling.address: {err}") from None
    resolved = resolve(config)  # every configuration error surfaces here, before any cluster starts
    if not address and not _ray_running():
        # a local Ray gets this machine's CPUs and GPUs: refuse what cannot fit before starting it
        check_fits(config.scaling, {"CPU": _machine_cpus(), "GPU": _machine_gpus()}, "this machine")
    with use_tracking_uri(config.mlflow.tracking_uri) as tracking_uri, \
            ray_session(config.scaling.address, num_cpus=_machine_cpus()):
        import ray

        check_fits(config.scaling, ray.cluster_resources(), "the Ray cluster")
        plans = check_split_reads_fit(resolved)  # before the MLflow run: a refused run leaves no FAILED run behind
        return _train_and_register(resolved, tracking_uri, show_progress, listeners, extension, plans)


def _train_and_register(resolved: ResolvedConfig, tracking_uri: str, show_progress: bool,
                        listeners: tuple[Callable[[ProgressSnapshot], None], ...],
                        extension: TrainingExtension | None = None,
                        plans: Mapping[str, ReadPlan] | None = None) -> TrainingResult:
    import ray
    from mlflow import MlflowClient

    from registry.tracking import ensure_experiment

    config = resolved.config
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = ensure_experiment(client, config.mlflow.experiment, tracking_uri)
    run = client.create_run(experiment_id, run_name=config.mlflow.run_name,
                            tags={"grec.job": "train", "grec.dataset": resolved.dataset_location})
    run_id = run.info.run_id
    board = None
    try:
        _log_inputs(client, run_id, resolved)
        board = _progress_board()
        result = _fit(resolved, tracking_uri, run_id, board, show_progress, listeners, extension, plans)
        restarts = _log_restarts(client, run_id, board)
        outcome = _register(resolved, client, run_id, result, restarts)
    except BaseException:
        if board is not None:
            _log_restarts(client, run_id, board)
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id)
    return outcome


def _progress_board():
    from jobs.train.progress import ProgressBoard

    return ProgressBoard.remote()


def _log_restarts(client, run_id: str, board: Any) -> int:
    """Worker-group failures recovered (ProgressSnapshot.group_failures), logged as `train/restarts`."""
    import ray

    restarts = ray.get(board.get.remote()).group_failures
    client.log_metric(run_id, "train/restarts", restarts)
    return restarts


def failure_budget_note(failures: int, max_failures: int) -> str:
    """How much of `scaling.max_failures` (a budget of worker-group failures) `failures` used."""
    if max_failures < 0:
        return f"failure {failures}; scaling.max_failures -1: unlimited"
    left = max(0, max_failures - failures)
    then = f"{left} more can be recovered" if left else "the next one ends the run"
    return f"failure {failures} of scaling.max_failures {max_failures}; {then}"


class RestartReporter:
    """A progress listener that says, once each, when the training worker group restarts after a
    failure (Ray Train restarts every worker of the group, which resumes from the last checkpoint)."""

    def __init__(self, max_failures: int) -> None:
        self.max_failures = max_failures
        self.reported = 0

    def __call__(self, snapshot: ProgressSnapshot) -> None:
        failures = snapshot.group_failures
        if failures > self.reported:
            self.reported = failures
            resumed = f"after epoch {snapshot.epochs[-1]['epoch'] + 1}" if snapshot.epochs else "from the start"
            logger.warning("the training workers restarted after a failure (%s); resuming %s",
                           failure_budget_note(failures, self.max_failures), resumed)


def checkpoint_storage(config: TrainConfig) -> str:
    """Where a run's Ray Train checkpoints go: scaling.storage_path, else .grec/ray_results here (absolute,
    so a Tune trial, which runs in its own working directory, writes to the same place)."""
    return config.scaling.storage_path or str((Path.cwd() / ".grec" / RAY_RESULTS_DIR).resolve())


def build_trainer(resolved: ResolvedConfig, tracking_uri: str, run_id: str, board: Any, *, name: str,
                  extension: TrainingExtension | None = None, callbacks: tuple[Any, ...] = (),
                  plans: Mapping[str, ReadPlan] | None = None):
    """The Ray Train TorchTrainer of a run (not started): `scaling.num_workers` workers each running
    `train_loop_per_worker` with a DeepSpeed engine over the streamed splits, logging to MLflow run
    `run_id` and posting progress to `board`. `grec train` fits it under `name`; a `grec tune` trial
    fits the same trainer with Ray Train callbacks that report each epoch to Tune. `plans`: the splits'
    read plans where the caller has them (check_split_reads_fit), read from the footers otherwise."""
    import ray.data
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from feature_store.transforms import TransformSet
    from jobs.train.data import ingest_options, shared_task_memory, transformed_split
    from jobs.train.worker import WorkerJob, train_loop_per_worker

    config = resolved.config
    scaling, stopping = config.scaling, config.training.early_stopping
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver draws its own
    context.execution_options.preserve_order = True  # same shards, same order: resumable epochs
    transforms = TransformSet.load(resolved.dataset_dir / "transforms.json")
    location, plans = resolved.dataset_location, plans or split_read_plans(resolved)
    memory = shared_task_memory(plans.values())  # the two splits' tasks share worker processes
    train = transformed_split(location, config.dataset.train_split, transforms, plans["train"], memory)
    if extension is not None:
        train = extension.train_dataset(train)
    # What the trainers hold bounds what the pipeline reads ahead (jobs/train/data.py: ingest_options).
    ingest = {"train": ingest_options(scaling.num_workers, config.training.batch_size, config.dataset.shuffle_buffer,
                                      plans["train"]),
              "validation": ingest_options(scaling.num_workers, config.training.eval_batch_size, 0,
                                           plans["validation"])}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=WorkerJob(resolved, tracking_uri, run_id, board, extension),
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker={"CPU": scaling.cpus_per_worker}),
        run_config=RunConfig(
            name=name, storage_path=checkpoint_storage(config),
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=scaling.checkpoints_to_keep,
                                               checkpoint_score_attribute=stopping.metric,
                                               checkpoint_score_order=stopping.mode),
            # Ray Train's INFO lines (each report, each checkpoint's path, every epoch) buried the
            # job's own progress lines; its warnings and errors still reach the terminal.
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=list(callbacks),
        ),
        datasets={"train": train,
                  "validation": transformed_split(location, config.dataset.validation_split, transforms,
                                                  plans["validation"], memory)},
        dataset_config=DataConfig(execution_options=ingest),
    )


def _fit(resolved: ResolvedConfig, tracking_uri: str, run_id: str, board: Any, show_progress: bool,
         listeners: tuple[Callable[[ProgressSnapshot], None], ...], extension: TrainingExtension | None = None,
         plans: Mapping[str, ReadPlan] | None = None):
    """Runs the TorchTrainer in a thread while the main thread shows progress; returns Ray's Result."""
    from jobs.train.progress import watch

    config = resolved.config
    trainer = build_trainer(resolved, tracking_uri, run_id, board, name=f"grec-train-{run_id}", extension=extension,
                            plans=plans)
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
    restarts = RestartReporter(config.scaling.max_failures)
    watch(board, done, config.training.epochs, _steps_per_epoch(resolved), show=show_progress,
          listeners=(restarts, *listeners))
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
    best_checkpoint, best_metrics = best_reported(result.best_checkpoints, stopping.metric, stopping.mode)
    with result.checkpoint.as_directory() as latest:
        state = TrainerState.load(Path(latest))
    with best_checkpoint.as_directory() as directory:
        model = model_from_checkpoint(directory, resolved)
    best_epoch = int(best_metrics["epoch"])
    best_record = next(h for h in state.history if h["epoch"] == best_epoch)
    _warn_if_dropped(state.history, resolved.model_config.router.capacity_factor)
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


def _warn_if_dropped(history: list[dict[str, Any]], capacity_factor: float | None) -> None:
    """Says at the end of the run how much expert work an opt-in capacity dropped in training (the
    served model runs every assignment)."""
    dropped = [h["metrics"].get("train/dropped_fraction", 0.0) for h in history]
    if max(dropped, default=0.0) > 0:
        logger.warning("router.capacity_factor %s dropped %.1f%% of the expert assignments in training (mean over "
                       "%d epochs; worst epoch %.1f%%): the model trained skipped expert work the served model "
                       "runs; delete router.capacity_factor for dropless training", capacity_factor,
                       100 * sum(dropped) / len(dropped), len(dropped), 100 * max(dropped))


def best_reported(checkpoints: list, metric: str, mode: str):
    """The (checkpoint, metrics) pair of a Ray Train result's `best_checkpoints` whose `metric` is best."""
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
    """The first SAMPLE_ROWS raw validation rows."""
    return split_dataset(resolved.dataset_location, resolved.config.dataset.validation_split).head(SAMPLE_ROWS)


def _steps_per_epoch(resolved: ResolvedConfig) -> int:
    """From the Parquet footers (no rows read): ceil(rows / workers / batch)."""
    rows = split_dataset(resolved.dataset_location, resolved.config.dataset.train_split).count_rows()
    scaling = resolved.config.scaling
    return max(1, math.ceil(rows / scaling.num_workers / resolved.config.training.batch_size))


def _ray_running() -> bool:
    import ray

    return ray.is_initialized()


def _machine_cpus() -> int:
    """The CPUs this process may use (its affinity: a container's limit, not the host's count)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _machine_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def split_read_plans(resolved: ResolvedConfig) -> dict[str, ReadPlan]:
    """The ReadPlan of the training and validation splits of a run (jobs/train/data.py: read_plan)."""
    from jobs.train.data import read_plan

    dataset = resolved.config.dataset
    return {"train": read_plan(resolved.dataset_location, dataset.train_split),
            "validation": read_plan(resolved.dataset_location, dataset.validation_split)}


def check_split_reads_fit(resolved: ResolvedConfig) -> dict[str, ReadPlan]:
    """Refuses a run whose split read tasks fit no node of the connected Ray cluster (check_data_tasks_fit);
    returns the plans it checked, for the trainer to read with (build_trainer)."""
    import ray

    plans = split_read_plans(resolved)
    check_data_tasks_fit(plans, max(
        (node["Resources"].get("memory", 0) for node in ray.nodes() if node["Alive"]), default=0), "the Ray cluster")
    return plans


def check_data_tasks_fit(plans: Mapping[str, ReadPlan], node_memory: float, where: str) -> None:
    """Refuses a split whose read or transform tasks ask for more memory (jobs/train/data.py: ReadPlan)
    than the largest node of `where` has: Ray would wait for that node forever."""
    for split, plan in plans.items():
        need = plan.task_memory
        if need > node_memory:
            raise ConfigError(f"dataset: the {split} split's read tasks need {need / 2**20:,.0f} MiB each (row groups "
                              f"of up to {plan.row_group_bytes / 2**20:,.0f} MiB decoded, {plan.row_bytes:,.0f} bytes "
                              f"a row); the largest node of {where} has {node_memory / 2**20:,.0f} MiB for tasks "
                              "(write the training set with smaller row groups, or add memory to the nodes)")


def run_cpus(scaling: ScalingSection) -> float:
    """The CPUs a training run holds: its workers' plus the data pipeline's."""
    return scaling.num_workers * scaling.cpus_per_worker + DATA_PIPELINE_CPUS


def check_fits(scaling: ScalingSection, resources: Mapping[str, float], where: str) -> None:
    """Refuses a run that cannot be placed on `resources` (a Ray cluster's, or this machine's): the
    workers' CPUs plus the data pipeline's beyond the CPUs there, or a GPU per worker where there are
    fewer. Ray would otherwise wait for resources that never come."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    workers = scaling.num_workers * scaling.cpus_per_worker
    need = run_cpus(scaling)
    if need > cpus:
        raise ConfigError(f"scaling: {scaling.num_workers} workers x {scaling.cpus_per_worker:g} CPUs per worker "
                          f"= {workers:g} CPUs, plus {DATA_PIPELINE_CPUS:g} for the data pipeline, need {need:g} CPUs; "
                          f"{where} has {cpus:g} (lower --num-workers or scaling.cpus_per_worker)")
    if scaling.use_gpu and gpus < scaling.num_workers:
        raise ConfigError(f"scaling.use_gpu: {scaling.num_workers} workers need a GPU each; {where} has {gpus:g} GPUs "
                          "(lower --num-workers, or train without --use-gpu)")
