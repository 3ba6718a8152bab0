"""A model's task heads as a group: adding a task's head (and its learned loss weight), where a list
of requested tasks sits among the model's tasks, scoring them grouped by head kind, and training only
what a new task added."""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

import torch
from torch import nn

from grec.heads import ScalarHead, make_head, scalar_logits
from grec.spec import TaskSpec


class TaskLayout(NamedTuple):
    """Where the requested tasks sit, computed once per task list: their rows among the model's tasks,
    and which of them have scalar heads (scored grouped) or multiclass heads."""

    requested: torch.Tensor  # [T] rows in model.task_names
    scalar: list[int]  # positions in the requested list
    scalar_index: torch.Tensor
    multiclass: list[int]


def add_task_head(heads: nn.ModuleDict, log_vars: nn.ParameterDict, task: TaskSpec, hidden: int,
                  weighting: str) -> list[nn.Parameter]:
    """Adds `task`'s head on `hidden` inputs to `heads` and, with `uncertainty` loss weighting, its
    log-variance to `log_vars`; returns the new parameters."""
    heads[task.name] = make_head(task, hidden)
    new = list(heads[task.name].parameters())
    if weighting == "uncertainty":
        log_vars[task.name] = nn.Parameter(torch.zeros(()))
        new.append(log_vars[task.name])
    return new


def task_layout(task_names: list[str], heads: nn.ModuleDict, tasks: list[str], device: torch.device) -> TaskLayout:
    """The layout of `tasks` (requested, in this order) among the model's `task_names`."""
    scalar = [i for i, t in enumerate(tasks) if isinstance(heads[t], ScalarHead)]
    return TaskLayout(torch.tensor([task_names.index(t) for t in tasks], device=device), scalar,
                      torch.tensor(scalar, dtype=torch.long, device=device),
                      [i for i in range(len(tasks)) if i not in set(scalar)])


def task_logits(heads: nn.ModuleDict, tasks: list[str], layout: TaskLayout, hidden: torch.Tensor,
                without_logits: Collection[str]) -> dict[str, torch.Tensor]:
    """Logits of `tasks` from their hidden states [T, B, H] (task-major, in the order of `tasks`), in
    that order: the scalar heads in one batched op, each multiclass head alone except those in
    `without_logits` (trained with sampled softmax, which reads the hidden state instead)."""
    per_task = hidden.unbind(0)
    logits: dict[str, torch.Tensor] = {}
    if layout.scalar:
        grouped = hidden if len(layout.scalar) == len(tasks) else hidden.index_select(0, layout.scalar_index)
        scores = scalar_logits([heads[tasks[i]] for i in layout.scalar], grouped).unbind(0)
        logits.update((tasks[i], score) for i, score in zip(layout.scalar, scores))
    for i in layout.multiclass:
        if tasks[i] not in without_logits:
            logits[tasks[i]] = heads[tasks[i]].logits(per_task[i])
    return {t: logits[t] for t in tasks if t in logits}


def copy_task_parameters(model: nn.Module, source: str, target: str) -> None:
    """Sets every parameter that `target` owns to `source`'s values: per-task parameters live in
    ParameterDicts and ModuleDicts keyed by task name (task token, skill mixing rows and exclusive
    skills, head, loss weight), so each such dict holding both names gets the source's entry copied
    into the target's."""
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, nn.ParameterDict | nn.ModuleDict) or source not in module or target not in module:
                continue
            pairs = ([(module[source], module[target])] if isinstance(module, nn.ParameterDict)
                     else zip(module[source].parameters(), module[target].parameters(), strict=True))
            for origin, copy in pairs:
                copy.copy_(origin)


def train_only(model: nn.Module, parameters: list[nn.Parameter]) -> None:
    """Freezes every parameter of `model` but `parameters` (what a new task added), which train."""
    trainable = {id(p) for p in parameters}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in trainable)
