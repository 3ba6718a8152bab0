"""The torchmetrics forms of the per-task metrics that torchmetrics has no class for as grec needs
them: an exact AUROC that is NaN on one class, and log losses computed as scikit-learn computes them.

`jobs.metrics` names these as the `streaming` form of its metrics; training validation updates them
batch by batch and torchmetrics synchronizes them across Ray Train workers.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities.data import dim_zero_cat


class ExactBinaryAUROC(BinaryAUROC):
    """torchmetrics' exact AUROC, NaN (not 0 and a warning) when the rows hold one class only.

    Exact (every validation row's score is kept, 12 bytes a row and task), as offline evaluation's
    is: a binned AUC would differ from it by up to the pairs inside a bin."""

    def __init__(self) -> None:
        super().__init__(thresholds=None)

    def compute(self) -> torch.Tensor:
        # `target` is a list of batches, or one tensor once synchronized across ranks
        empty = isinstance(self.target, list) and not self.target
        target = torch.empty(0) if empty else dim_zero_cat(self.target)
        if target.numel() == 0 or bool(target.min() == target.max()):
            return torch.tensor(float("nan"))
        return super().compute()

    def take_part_in_sync(self) -> None:
        """Adds an empty batch when this rank scored no row: the sync gathers one tensor per
        rank, and a rank with nothing to send would leave the others waiting."""
        if isinstance(self.preds, list) and not self.preds:
            self.update(torch.empty(0), torch.empty(0, dtype=torch.long))


class MeanRowLoss(MeanMetric):
    """The mean of a per-row loss (torchmetrics 1.0 has no log loss)."""

    def __init__(self, row_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.row_loss = row_loss

    def update(self, predictions: torch.Tensor, labels: torch.Tensor) -> None:  # type: ignore[override]
        super().update(self.row_loss(predictions, labels))


def binary_cross_entropy(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row log loss, probabilities clipped to [eps, 1 - eps] as scikit-learn's log_loss does."""
    eps = torch.finfo(torch.float64).eps
    p = probabilities.double().clamp(eps, 1 - eps)
    y = labels.double()
    return -(y * p.log() + (1 - y) * (1 - p).log())


def class_cross_entropy(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row log loss of the label's class, rows renormalized and clipped as scikit-learn does."""
    eps = torch.finfo(torch.float64).eps
    p = probabilities.double().clamp(eps, 1 - eps)
    p = p / p.sum(dim=1, keepdim=True)
    return -p.gather(1, labels.long()[:, None]).squeeze(1).log()
