"""Validation metrics of a training run, computed across Ray Train workers with torchmetrics.

Which metrics a task gets, and their names, come from the definitions shared with offline
evaluation (jobs/metrics): every metric that has a `streaming` form there is updated here batch
by batch and synchronized over all ranks when computed, so every rank derives the same values,
equal to scikit-learn's on the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torchmetrics import MeanMetric, Metric

from grec import TaskSpec
from jobs.metrics import task_metrics
from jobs.metrics.streaming import ExactBinaryAUROC


# The mean AUC over the binary tasks whose validation rows hold both classes.
TASK_AVERAGE_AUC = "val/auc_mean"


class ValidationAccumulator:
    """The validation loss, every task's streamed metrics and the expert load per task."""

    def __init__(self, tasks: Sequence[TaskSpec], num_experts: int = 0) -> None:
        self.tasks = list(tasks)
        self.task_names = [t.name for t in self.tasks]
        self.loss = MeanMetric()
        self.metrics: dict[str, dict[str, Metric]] = {
            t.name: {m.name: m.streaming(t.num_classes) for m in task_metrics(t.kind) if m.streaming is not None}
            for t in self.tasks
        }
        self.expert_load = torch.zeros(len(self.tasks), max(num_experts, 1), dtype=torch.float64)

    def update(self, predictions: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], loss: float,
               rows: int, expert_load: torch.Tensor | None = None) -> None:
        self.loss.update(torch.tensor(float(loss)), weight=float(rows))
        for task in self.tasks:
            label = labels[task.name]
            # Rows without a label for the task (NaN, or a negative class id) count in no metric,
            # as the losses leave them out.
            known = label >= 0 if task.kind == "multiclass" else ~torch.isnan(label)
            scores = predictions[task.name].detach().float()[known]
            # 0/1 and class ids as integers (torchmetrics' classification metrics require it)
            targets = label[known].float() if task.kind == "regression" else label[known].long()
            for metric in self.metrics[task.name].values():
                metric.update(scores, targets)
        if expert_load is not None:
            self.expert_load += expert_load.detach().double()

    def all_reduce(self, reduce_sum: Callable[[torch.Tensor], None]) -> None:
        """Sums the expert load over ranks in place (`reduce_sum` is e.g. torch.distributed.all_reduce)
        and readies every rank for the metrics' own sync, which `compute` runs."""
        reduce_sum(self.expert_load)
        for metrics in self.metrics.values():
            for metric in metrics.values():
                if isinstance(metric, ExactBinaryAUROC):
                    metric.take_part_in_sync()

    def compute(self) -> dict[str, float]:
        """`val/loss` and `val/<task>/<metric>` (names as in jobs.train.config.metric_names)."""
        values = {"val/loss": float(self.loss.compute())}
        for task, metrics in self.metrics.items():
            values.update({f"val/{task}/{name}": float(metric.compute()) for name, metric in metrics.items()})
        aucs = [values[f"val/{t.name}/auc"] for t in self.tasks if f"val/{t.name}/auc" in values]
        if aucs:  # the task-average AUC: what a multi-task model is selected on
            finite = [a for a in aucs if a == a]
            values[TASK_AVERAGE_AUC] = sum(finite) / len(finite) if finite else float("nan")
        return values

    def expert_load_fractions(self) -> list[list[float]]:
        """[task][expert] share of each task's assignments per expert."""
        totals = self.expert_load.sum(1, keepdim=True).clamp_min(1.0)
        return (self.expert_load / totals).tolist()
