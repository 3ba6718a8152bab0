"""Task heads: binary, regression, multiclass (with sampled softmax for large catalogs).

Labels that are missing for a row (NaN for binary/regression, negative for multiclass) are left out
of the loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from grec.spec import TaskSpec


class TaskHead(nn.Module, ABC):
    """A linear output layer plus the task's loss and its logits -> prediction map."""

    def __init__(self, hidden: int, outputs: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden, outputs)

    @abstractmethod
    def logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def predict(self, logits: torch.Tensor) -> torch.Tensor: ...


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    # No valid label: a zero that stays connected to the graph.
    if not bool(valid.any()):
        return values.sum() * 0.0
    return values[valid].mean()


class ScalarHead(TaskHead):
    """One output per sentence: [B] logits (binary) or values (regression)."""

    def __init__(self, hidden: int) -> None:
        super().__init__(hidden, 1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)


class BinaryHead(ScalarHead):
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        valid = ~torch.isnan(labels)
        losses = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(labels).to(logits.dtype), reduction="none")
        return _masked_mean(losses, valid)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


class RegressionHead(ScalarHead):
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        valid = ~torch.isnan(labels)
        return _masked_mean((logits - torch.nan_to_num(labels).to(logits.dtype)).pow(2), valid)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits


class MulticlassHead(TaskHead):
    """The rows of the output layer are the class (item) embeddings; sampled softmax scores the true
    class against uniformly sampled negatives shared by the batch."""

    def __init__(self, hidden: int, num_classes: int) -> None:
        super().__init__(hidden, num_classes)
        self.num_classes = num_classes

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        valid = labels >= 0
        losses = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
        return _masked_mean(losses, valid)

    def sampled_loss(self, hidden: torch.Tensor, labels: torch.Tensor, num_negatives: int) -> torch.Tensor:
        valid = labels >= 0
        labels = labels.clamp_min(0)
        negatives = torch.randint(self.num_classes, (num_negatives,), device=hidden.device)
        weight, bias = self.linear.weight, self.linear.bias
        true_logit = (hidden * weight[labels]).sum(-1) + bias[labels]
        negative_logits = hidden @ weight[negatives].T + bias[negatives]
        # A sampled negative equal to the true class is not a negative.
        negative_logits = negative_logits.masked_fill(negatives.unsqueeze(0) == labels.unsqueeze(1), float("-inf"))
        scores = torch.cat([true_logit.unsqueeze(1), negative_logits], dim=1)
        losses = F.cross_entropy(scores, torch.zeros_like(labels), reduction="none")
        return _masked_mean(losses, valid)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1)


def make_head(task: TaskSpec, hidden: int) -> TaskHead:
    if task.kind == "binary":
        return BinaryHead(hidden)
    if task.kind == "regression":
        return RegressionHead(hidden)
    return MulticlassHead(hidden, int(task.num_classes))


def head_parameters(task: TaskSpec, hidden: int) -> int:
    return (hidden + 1) * task.output_dim
