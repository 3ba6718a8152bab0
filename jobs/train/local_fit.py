"""Training in this process: one model, epochs with early stopping on validation, plain PyTorch.

What the quality and recommendation benchmarks and the configs' smoke test run where a Ray Train
job per model would cost more than the model (`grec train` and `grec tune` trials run the Ray
Train job of jobs/train/job.py). The model, its losses, the task sampling and
the validation metrics (`jobs.train.metrics.ValidationAccumulator`, the names `grec train` logs) are
those of the distributed job; the optimizer is the config's (AdamW by default) on every parameter,
as DeepSpeed runs it when the embedding tables stay in the engine. Cost is counted in CPU seconds of
this process (`time.process_time`): training epochs only, up to the best epoch.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from grec import MultiTaskModel
from jobs.train.config import EarlyStoppingSection, OptimizerSection, TrainConfig
from jobs.train.metrics import ValidationAccumulator


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    metrics: dict[str, float]  # validation metrics, `val/...`
    cpu_seconds: float  # training CPU seconds of this epoch
    dropped_fraction: float  # share of expert assignments an opt-in capacity dropped (mean over steps)
    best: bool  # the early-stopping metric improved


@dataclass
class FitResult:
    model: MultiTaskModel  # in eval mode, with the weights of the best epoch
    best_epoch: int
    best_metrics: dict[str, float]
    cpu_seconds_to_best: float  # training CPU seconds of epochs 0..best_epoch
    history: list[EpochRecord] = field(default_factory=list)


def make_optimizer(model: torch.nn.Module, config: OptimizerSection) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    # torch picks the per-tensor loop on CPU; with ~70 small tensors its Python overhead was 29% of an
    # Adult epoch. SGD takes the multi-tensor (foreach) update, Adam / AdamW the fused one.
    if config.name == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    kind = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
    # The fused update (one kernel over all tensors, CPU included) costs a third of the multi-tensor
    # one on Adult's 72 tensors (0.44 against 1.53 ms a step) with the same arithmetic.
    return kind(parameters, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas, eps=config.eps,
                fused=True)


def validate(model: MultiTaskModel, rows: pa.Table, batch_size: int) -> dict[str, float]:
    """Validation metrics of `rows` (transformed), as the distributed job computes them."""
    accumulator = ValidationAccumulator([model.config.input.task(t) for t in model.task_names])
    model.eval()
    with torch.no_grad():
        for first in range(0, rows.num_rows, batch_size):
            batch = model.collate_labelled(rows.slice(first, batch_size))
            out = model(batch)
            loss, _ = model.loss(out, batch)
            predictions = {t: model.heads[t].predict(logits) for t, logits in out.logits.items()}
            accumulator.update(predictions, batch.labels, float(loss), batch.size)
    return accumulator.compute()


def _improved(value: float, best: float | None, stopping: EarlyStoppingSection) -> bool:
    if value != value:  # NaN never improves
        return False
    if best is None:
        return True
    return value < best - stopping.min_delta if stopping.mode == "min" else value > best + stopping.min_delta


def fit(model: MultiTaskModel, train: pa.Table, validation: pa.Table, config: TrainConfig) -> FitResult:
    """Trains `model` on `train` (transformed rows) for up to `config.training.epochs`, validates
    after each epoch and stops after `early_stopping.patience` epochs without improvement of its
    metric. Returns the best epoch's model."""
    training, stopping = config.training, config.training.early_stopping
    torch.manual_seed(training.seed)
    rng = np.random.default_rng(training.seed)
    optimizer = make_optimizer(model, config.optimizer)
    clipping = config.deepspeed.gradient_clipping
    history: list[EpochRecord] = []
    best_value, best_state, best_epoch, step, waited = None, None, -1, 0, 0
    for epoch in range(training.epochs):
        model.train()
        started = time.process_time()
        total, batches, dropped = 0.0, 0, 0.0
        order = rng.permutation(train.num_rows)
        for first in range(0, len(order), training.batch_size):
            batch = model.collate_labelled(train.take(pa.array(order[first:first + training.batch_size])))
            tasks, scale = model.training_tasks(step)
            out = model(batch, tasks)
            loss, _ = model.loss(out, batch, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clipping > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clipping)
            optimizer.step()
            total, batches, step = total + float(loss.detach()), batches + 1, step + 1
            dropped += 0.0 if out.router_stats is None else float(out.router_stats.dropped_fraction)
        cpu = time.process_time() - started
        metrics = validate(model, validation, training.eval_batch_size)
        value = metrics[stopping.metric]
        improved = _improved(value, best_value, stopping)
        if improved:
            best_value, best_epoch, waited = value, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            waited += 1
        record = EpochRecord(epoch, total / max(batches, 1), metrics, cpu, dropped / max(batches, 1), improved)
        history.append(record)
        if waited >= stopping.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    best = history[best_epoch] if best_epoch >= 0 else history[-1]
    return FitResult(model, best.epoch, best.metrics, sum(r.cpu_seconds for r in history[:best.epoch + 1]), history)
