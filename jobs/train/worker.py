"""The Ray Train worker function: build the model, hand it to DeepSpeed (the sparse part to torchrec
DMP when configured), train epoch by epoch on the streamed shard, validate, checkpoint, report."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist

from jobs.train.checkpointing import (
    DEEPSPEED_DIR,
    DEEPSPEED_TAG,
    SPARSE_DIR,
    SkipLoggedSteps,
    TrainerState,
    load_rng,
    save_rng,
)
from jobs.train.config import ResolvedConfig
from jobs.train.data import EpochStream, InputWait, iter_model_batches
from jobs.train.engine import engine_dtype, export_distributed_env, initialize_engine
from jobs.train.metrics import ValidationAccumulator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    """One training epoch over all ranks."""

    loss: float  # mean over every rank's batches
    samples_per_second: float  # all ranks' rows over the slowest rank's seconds
    input_wait_fraction: float  # the slowest rank's share of the epoch spent waiting for batches
    dropped_fraction: float  # share of expert assignments over capacity, mean over every rank's batches


class TrainingExtension(Protocol):
    """Adds to a training run's objective (e.g. distillation, jobs/compact/distill.py): the driver passes the
    training split through `train_dataset`; workers collate its batches with `collate(model_collate)`
    and add `extra_loss` to each step's loss."""

    def train_dataset(self, dataset: Any) -> Any: ...

    def collate(self, model_collate: Callable[[Any], Any]) -> Callable[[Any], Any]: ...

    def extra_loss(self, out: Any, batch: Any, task_scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@dataclass(frozen=True)
class WorkerJob:
    """What the driver sends every worker."""

    resolved: ResolvedConfig
    tracking_uri: str
    run_id: str
    progress: Any  # a ProgressBoard actor handle
    extension: TrainingExtension | None = None


class Trainee:
    """The model as trained on this rank: the DeepSpeed engine, plus the DMP-sharded sparse part
    when the config shards it; `forward` runs both for a batch."""

    def __init__(self, resolved: ResolvedConfig, rank: int, local_rank: int, world_size: int) -> None:
        from grec import build_model

        from jobs.train.sharding import ShardedSparseInput, shard_sparse_arch

        config = resolved.config
        use_gpu = config.scaling.use_gpu and torch.cuda.is_available()
        self.device = torch.device(f"cuda:{local_rank}" if use_gpu else "cpu")
        self.dtype = engine_dtype(config)
        model = build_model(resolved.model_config)
        self.sparse = None
        if resolved.sharded:
            self.sparse = shard_sparse_arch(model.sparse_arch, config.sparse, self.device)
            model.sparse_arch = ShardedSparseInput()
        export_distributed_env(rank, local_rank, world_size)
        self.engine = initialize_engine(model, config, world_size)
        self.model = self.engine.module

    def forward(self, batch, tasks: list[str] | None = None):
        batch = batch.to(self.device)
        if self.dtype != torch.float32 and batch.numeric is not None:
            batch.numeric = batch.numeric.to(self.dtype)
        if self.sparse is not None:
            pooled, per_position = self.sparse(batch.categorical, batch.sequences)
            self.model.sparse_arch.feed(({k: v.to(self.dtype) for k, v in pooled.items()},
                                         {k: v.to(self.dtype) for k, v in per_position.items()}))
        # DeepSpeed casts the weights to bf16, not the tensors the model creates in forward (masks,
        # positions, padding): autocast makes the matmuls that meet them agree on the dtype.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.dtype == torch.bfloat16):
            return batch, self.engine(batch, tasks)

    def loss(self, out, batch, task_scale: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = {k: v.float() for k, v in out.logits.items()}  # losses in fp32 whatever the precision
        hidden = {k: v.float() for k, v in out.hidden.items()}
        aux = {k: v.float() for k, v in out.aux_losses.items()}
        return self.model.loss(type(out)(logits, hidden, aux, out.router_stats), batch, task_scale)

    def train(self, mode: bool) -> None:
        self.engine.train(mode)
        if self.sparse is not None:
            self.sparse.train(mode)

    def save(self, directory: Path, rank: int) -> None:
        from jobs.train.sharding import save_sharded

        self.engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG)
        if self.sparse is not None:
            save_sharded(self.sparse, directory / SPARSE_DIR)
        save_rng(directory, rank)

    def load(self, directory: Path, rank: int) -> None:
        from jobs.train.sharding import load_sharded

        self.engine.load_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG)
        if self.sparse is not None:
            load_sharded(self.sparse, directory / SPARSE_DIR)
        load_rng(directory, rank)


def train_loop_per_worker(job: WorkerJob) -> None:
    """The Ray Train loop (one process per worker)."""
    import ray.train

    from registry.tracking import RankZeroLogger

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    resolved, config = job.resolved, job.resolved.config
    torch.manual_seed(config.training.seed + rank)
    job.progress.worker_started.remote(rank, os.getpid())
    trainee = Trainee(resolved, rank, context.get_local_rank(), world)
    state = TrainerState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            trainee.load(Path(directory), rank)
            state = TrainerState.load(Path(directory))
        logger.info("rank %d resumed after epoch %d", rank, state.epoch + 1)
    mlflow_log = RankZeroLogger(job.tracking_uri, job.run_id, rank)
    if checkpoint is not None:
        mlflow_log = SkipLoggedSteps(mlflow_log)  # the replayed epoch's steps are logged already
    # The order of an epoch's batches is fixed per (epoch, rank): a rerun sees the same order.
    labelled = trainee.model.collate_labelled  # sampled negatives for implicit-feedback tasks
    collate = labelled if job.extension is None else job.extension.collate(labelled)
    train_stream = EpochStream(ray.train.get_dataset_shard("train"), collate,
                               config.training.batch_size, shuffle_buffer=config.dataset.shuffle_buffer,
                               seed_of=lambda epoch: config.training.seed + 1000 * epoch + rank)
    validation_shard = ray.train.get_dataset_shard("validation")
    stopping = config.training.early_stopping

    for epoch in range(state.epoch + 1, config.training.epochs):
        started = time.perf_counter()
        trained = _train_epoch(trainee, train_stream, state, epoch, rank, job, mlflow_log)
        if epoch + 1 < config.training.epochs:
            train_stream.start_early(epoch + 1)  # its start-up overlaps validation and the checkpoint
        metrics, expert_load = _validate(trainee, validation_shard, resolved)
        metrics = {"train/loss": trained.loss, "train/dropped_fraction": trained.dropped_fraction, **metrics}
        value = metrics[stopping.metric]
        best = state.improved(value, stopping.mode, stopping.min_delta)
        if best:
            state.best_metric, state.best_epoch, state.epochs_without_improvement = value, epoch, 0
        else:
            state.epochs_without_improvement += 1
        state.epoch = epoch
        summary = {"epoch": epoch, "metrics": metrics, "seconds": time.perf_counter() - started, "best": best,
                   "samples_per_second": trained.samples_per_second,
                   "input_wait_fraction": trained.input_wait_fraction}
        state.history.append({**summary, "expert_load": expert_load, "global_step": state.global_step})
        mlflow_log.log_metrics({**metrics, "epoch_seconds": summary["seconds"],
                                "train/samples_per_second": trained.samples_per_second,
                                "train/input_wait_fraction": trained.input_wait_fraction}, step=epoch)
        _checkpoint_and_report(trainee, state, rank, {**metrics, "epoch": epoch})
        if rank == 0:
            job.progress.epoch_done.remote(summary)
        if state.epochs_without_improvement >= stopping.patience:
            logger.info("early stopping after epoch %d: %s did not improve for %d epochs",
                        epoch + 1, stopping.metric, stopping.patience)
            break


def _train_epoch(trainee: Trainee, stream: EpochStream, state: TrainerState, epoch: int, rank: int,
                 job: WorkerJob, mlflow_log) -> EpochStats:
    """One pass over this rank's shard."""
    config = job.resolved.config
    trainee.train(True)
    total, batches, rows, dropped = 0.0, 0, 0, 0.0
    started = time.perf_counter()
    wait = InputWait()
    for step, batch in enumerate(wait.iterate(stream.batches(epoch))):
        # All tasks, or `model.losses.tasks_per_step` of them drawn by step (the same on every rank).
        tasks, task_scale = trainee.model.training_tasks(state.global_step)
        batch, out = trainee.forward(batch, tasks)
        loss, parts = trainee.loss(out, batch, task_scale)
        if job.extension is not None:
            extra, extra_parts = job.extension.extra_loss(out, batch, task_scale)
            loss, parts = loss + extra, {**parts, **extra_parts}
        trainee.engine.backward(loss)
        trainee.engine.step()
        state.global_step += 1
        value = float(loss.detach())
        step_dropped = 0.0 if out.router_stats is None else float(out.router_stats.dropped_fraction)
        total, batches, rows, dropped = total + value, batches + 1, rows + batch.size, dropped + step_dropped
        if state.global_step % config.training.log_every_n_steps == 0:
            mlflow_log.log_metrics({"train/step_loss": value, "train/step_dropped_fraction": step_dropped,
                                    **{f"train/{k}": float(v) for k, v in parts.items()}}, step=state.global_step)
            if rank == 0:
                job.progress.step.remote(epoch, step + 1, value)
    elapsed = time.perf_counter() - started
    slowest = torch.tensor([elapsed, wait.seconds / max(elapsed, 1e-9)], dtype=torch.float64)
    sums = torch.tensor([total, float(batches), float(rows), dropped], dtype=torch.float64)
    dist.all_reduce(sums)  # the mean over every rank's batches, the same on all ranks
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
    mean = float(sums[0] / sums[1].clamp_min(1.0))
    if rank == 0:
        job.progress.step.remote(epoch, batches, mean)
    return EpochStats(mean, float(sums[2] / slowest[0]), float(slowest[1]), float(sums[3] / sums[1].clamp_min(1.0)))


def _validate(trainee: Trainee, shard, resolved: ResolvedConfig) -> tuple[dict[str, float], list[list[float]]]:
    """Every rank scores its validation shard; one all-reduce gives all ranks the same metrics."""
    model = trainee.model
    tasks = [resolved.model_config.input.task(name) for name in resolved.task_names]
    accumulator = ValidationAccumulator(tasks, resolved.model_config.router.num_experts)
    trainee.train(False)
    with torch.no_grad():
        for batch in iter_model_batches(shard, model.collate_labelled, resolved.config.training.eval_batch_size):
            batch, out = trainee.forward(batch)
            loss, _ = trainee.loss(out, batch)
            predictions = {t: model.heads[t].predict(logits.float()) for t, logits in out.logits.items()}
            load = None
            if out.router_stats is not None:
                load = out.router_stats.load_matrix(resolved.task_names)
            accumulator.update(predictions, batch.labels, float(loss), batch.size, load)
    accumulator.all_reduce(dist.all_reduce)
    trainee.train(True)
    return accumulator.compute(), accumulator.expert_load_fractions()


def _checkpoint_and_report(trainee: Trainee, state: TrainerState, rank: int, metrics: dict[str, float]) -> None:
    """Every rank writes its part into one temporary directory, then all report it together."""
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        trainee.save(directory, rank)
        if rank == 0:
            state.save(directory)
        dist.barrier()
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
