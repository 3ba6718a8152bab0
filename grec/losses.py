"""The training loss of a multi-task model: each labelled task's loss (scalar heads grouped by kind,
multiclass heads full or sampled softmax), weighted by fixed task weights or learned uncertainty, plus
the router's auxiliary losses."""

from __future__ import annotations

import torch
from torch import nn

from grec.config import GRecConfig
from grec.heads import BinaryHead, MulticlassHead, RegressionHead, binary_losses, regression_losses
from grec.output import ModelOutput


def task_losses(out: ModelOutput, labels: dict[str, torch.Tensor], heads: nn.ModuleDict,
                sampled_softmax: dict[str, int]) -> tuple[list[str], torch.Tensor]:
    """(names, unweighted losses [len(names)]) of the tasks in `out` that have `labels`: binary, then
    regression tasks (each kind in one op), then multiclass tasks (sampled softmax where `out` holds no
    logits of the task)."""
    labelled = [t for t in out.hidden if t in labels]
    if not labelled:
        raise ValueError(f"the batch has no labels for tasks {list(out.hidden)}; labels: {list(labels)}")
    names: list[str] = []
    losses: list[torch.Tensor] = []
    for kind, grouped_loss in ((BinaryHead, binary_losses), (RegressionHead, regression_losses)):
        group = [t for t in labelled if isinstance(heads[t], kind)]
        if group:
            names += group
            losses.append(grouped_loss(torch.stack([out.logits[t] for t in group]),
                                       torch.stack([labels[t] for t in group])))
    for task in labelled:
        head = heads[task]
        if not isinstance(head, MulticlassHead):
            continue
        names.append(task)
        if task in out.logits:
            losses.append(head.loss(out.logits[task], labels[task]).unsqueeze(0))
        else:
            losses.append(head.sampled_loss(out.hidden[task], labels[task], sampled_softmax[task]).unsqueeze(0))
    return names, torch.cat(losses)


def multitask_loss(out: ModelOutput, labels: dict[str, torch.Tensor], heads: nn.ModuleDict,
                   log_vars: nn.ParameterDict, config: GRecConfig,
                   task_scale: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted losses of the tasks in `out` that have `labels` (times `task_scale`, see
    `grec.task_sampling`), plus router auxiliary losses. parts: 'task/<name>' (unweighted) and
    'aux/<name>' (unweighted), detached. `log_vars`: the tasks' log-variances (uncertainty weighting)."""
    losses = config.losses
    names, per_task = task_losses(out, labels, heads, losses.sampled_softmax)
    if losses.weighting == "uncertainty":
        log_var = torch.stack([log_vars[t] for t in names])
        weighted = torch.exp(-log_var) * per_task + log_var
    else:
        weights = [losses.task_weights.get(t, 1.0) for t in names]
        weighted = per_task * torch.tensor(weights, dtype=per_task.dtype, device=per_task.device)
    total = task_scale * weighted.sum()
    parts = dict(zip((f"task/{t}" for t in names), per_task.detach().unbind(0)))
    aux_weights = {"load_balance": config.router.load_balance_weight, "router_z": config.router.z_loss_weight}
    for name, value in out.aux_losses.items():
        parts[f"aux/{name}"] = value.detach()
        total = total + aux_weights[name] * value
    return total, parts
