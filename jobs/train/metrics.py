"""Validation metrics computed in a distributed way: each worker accumulates fixed-size sums over its
shard (score histograms for AUC, loss and squared-error sums), one all-reduce merges them, and
every rank derives the same metrics. Memory does not grow with the validation set.

AUC comes from score histograms with AUC_BINS bins: pairs whose scores fall in one bin count as
ties, so the error is at most the share of (positive, negative) pairs within a bin width of 1e-4.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from grec import TaskSpec

AUC_BINS = 10_000
EPS = 1e-7


class ValidationAccumulator:
    """Sums over validation batches, packed into one float64 vector for a single all-reduce."""

    def __init__(self, tasks: Sequence[TaskSpec], num_experts: int = 0) -> None:
        self.tasks = list(tasks)
        self.task_names = [t.name for t in self.tasks]
        self.num_experts = num_experts
        self.loss_sum = torch.zeros(2, dtype=torch.float64)  # weighted loss x rows, rows
        self.binary = {t.name: torch.zeros(2 * AUC_BINS + 2, dtype=torch.float64)
                       for t in self.tasks if t.kind == "binary"}  # pos hist, neg hist, logloss sum, rows
        self.regression = {t.name: torch.zeros(2, dtype=torch.float64)
                           for t in self.tasks if t.kind == "regression"}  # squared error sum, rows
        self.multiclass = {t.name: torch.zeros(3, dtype=torch.float64)
                           for t in self.tasks if t.kind == "multiclass"}  # nll sum, correct, rows
        self.expert_load = torch.zeros(len(self.tasks), max(num_experts, 1), dtype=torch.float64)

    def update(self, predictions: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], loss: float,
               rows: int, expert_load: torch.Tensor | None = None) -> None:
        self.loss_sum += torch.tensor([loss * rows, rows], dtype=torch.float64)
        for name, acc in self.binary.items():
            p = predictions[name].detach().double().clamp(EPS, 1 - EPS)
            y = labels[name].double()
            index = (p * AUC_BINS).long().clamp_(0, AUC_BINS - 1)
            acc[:AUC_BINS] += torch.bincount(index, weights=y, minlength=AUC_BINS)
            acc[AUC_BINS:2 * AUC_BINS] += torch.bincount(index, weights=1 - y, minlength=AUC_BINS)
            acc[-2] += -(y * p.log() + (1 - y) * (1 - p).log()).sum()
            acc[-1] += len(y)
        for name, acc in self.regression.items():
            acc += torch.stack([((predictions[name].detach().double() - labels[name].double()) ** 2).sum(),
                                torch.tensor(float(len(labels[name])), dtype=torch.float64)])
        for name, acc in self.multiclass.items():
            probs = predictions[name].detach().double().clamp_min(EPS)
            y = labels[name].long()
            acc += torch.stack([-probs.gather(1, y[:, None]).log().sum(),
                                (probs.argmax(1) == y).double().sum(),
                                torch.tensor(float(len(y)), dtype=torch.float64)])
        if expert_load is not None:
            self.expert_load += expert_load.detach().double()

    def _parts(self) -> list[torch.Tensor]:
        return [self.loss_sum, *self.binary.values(), *self.regression.values(), *self.multiclass.values(),
                self.expert_load.reshape(-1)]

    def all_reduce(self, reduce_sum: Callable[[torch.Tensor], None]) -> None:
        """Sums every rank's accumulators in place (`reduce_sum` is e.g. torch.distributed.all_reduce)."""
        parts = self._parts()
        flat = torch.cat(parts)
        reduce_sum(flat)
        offset = 0
        for part in parts:
            part.view(-1).copy_(flat[offset:offset + part.numel()])
            offset += part.numel()

    def compute(self) -> dict[str, float]:
        """Metric names as in jobs.train.config.metric_names."""
        metrics = {"val/loss": _ratio(self.loss_sum[0], self.loss_sum[1])}
        for name, acc in self.binary.items():
            metrics[f"val/{name}/auc"] = binned_auc(acc[:AUC_BINS], acc[AUC_BINS:2 * AUC_BINS])
            metrics[f"val/{name}/logloss"] = _ratio(acc[-2], acc[-1])
        for name, acc in self.regression.items():
            metrics[f"val/{name}/rmse"] = math.sqrt(_ratio(acc[0], acc[1])) if acc[1] > 0 else float("nan")
        for name, acc in self.multiclass.items():
            metrics[f"val/{name}/logloss"] = _ratio(acc[0], acc[2])
            metrics[f"val/{name}/accuracy"] = _ratio(acc[1], acc[2])
        return metrics

    def expert_load_fractions(self) -> list[list[float]]:
        """[task][expert] share of each task's assignments per expert."""
        totals = self.expert_load.sum(1, keepdim=True).clamp_min(1.0)
        return (self.expert_load / totals).tolist()


def binned_auc(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """ROC AUC from per-bin counts of positives and negatives (bins in increasing score order)."""
    total_pos, total_neg = float(positives.sum()), float(negatives.sum())
    if total_pos == 0 or total_neg == 0:
        return float("nan")
    negatives_below = torch.cumsum(negatives, 0) - negatives
    wins = (positives * negatives_below).sum() + 0.5 * (positives * negatives).sum()
    return float(wins / (total_pos * total_neg))


def _ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> float:
    return float(numerator / denominator) if float(denominator) > 0 else float("nan")
