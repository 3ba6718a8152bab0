"""Task heads: binary, regression, multiclass (with sampled softmax for large catalogs).

Labels that are missing for a row (NaN for binary/regression, negative for multiclass) are left out
of the loss. Heads of one scalar kind run grouped: `scalar_logits` scores many tasks in one batched
op and `binary_losses` / `regression_losses` give every task's loss at once.
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


def _masked_means(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over the last dim of `values` where `valid`; a row without a valid label gives a zero
    that stays connected to the graph."""
    weights = valid.to(values.dtype)
    return (values * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)


def binary_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy per task: logits and labels [T, B] -> [T]."""
    valid = ~torch.isnan(labels)
    losses = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(labels).to(logits.dtype), reduction="none")
    return _masked_means(losses, valid)


def regression_losses(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Squared error per task: values and labels [T, B] -> [T]."""
    valid = ~torch.isnan(labels)
    return _masked_means((values - torch.nan_to_num(labels).to(values.dtype)).pow(2), valid)


class ScalarHead(TaskHead):
    """One output per sentence: [B] logits (binary) or values (regression)."""

    def __init__(self, hidden: int) -> None:
        super().__init__(hidden, 1)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)


def scalar_logits(heads: list[ScalarHead], hidden: torch.Tensor) -> torch.Tensor:
    """The scalar heads' outputs [T, B] of their tasks' hidden states [T, B, H], in one batched op."""
    weight = torch.stack([head.linear.weight[0] for head in heads])  # [T, H]
    bias = torch.stack([head.linear.bias[0] for head in heads])  # [T]
    return torch.baddbmm(bias[:, None, None], hidden, weight.unsqueeze(-1)).squeeze(-1)


class BinaryHead(ScalarHead):
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return binary_losses(logits.unsqueeze(0), labels.unsqueeze(0))[0]

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)


class RegressionHead(ScalarHead):
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return regression_losses(logits.unsqueeze(0), labels.unsqueeze(0))[0]

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
        losses = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
        return _masked_means(losses, labels >= 0)

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
        return _masked_means(losses, valid)

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
