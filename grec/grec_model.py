"""GRec: task sentences through a sentence encoder, a task-sentence routed sparse MoE with C-Poly
skills, a skilled tower and a head per task."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grec.batch import Batch
from grec.config import GRecConfig
from grec.heads import head_parameters
from grec.export import TaskSubModel
from grec.model import MultiTaskModel
from grec.moe import SparseMoE
from grec.router import RouterStats, load_balancing_loss, router_z_loss
from grec.skills import SkillAdapter, SkilledLinear, adapter_parameters_per_task, make_adapter
from grec.spec import TaskSpec


def descriptor_pairs(tasks: list[TaskSpec]) -> list[tuple[str, str]]:
    """Every (descriptor, value) pair in order of first use: a stable index for its embedding."""
    pairs: list[tuple[str, str]] = []
    for task in tasks:
        for pair in task.descriptors.items():
            if pair not in pairs:
                pairs.append(pair)
    return pairs


class TaskTokens(nn.Module):
    """Task token = the task's own embedding + the embeddings of its descriptors (type, scenario ...)."""

    def __init__(self, d_model: int, tasks: list[TaskSpec]) -> None:
        super().__init__()
        self.d_model = d_model
        self.task_embedding = nn.ParameterDict()
        self.descriptor_embedding = nn.ParameterDict()  # "d<i>" for descriptor_pairs()[i]
        self.pairs: list[tuple[str, str]] = []
        self.descriptors_of: dict[str, list[str]] = {}
        for task in tasks:
            self.add_task(task)

    def add_task(self, task: TaskSpec) -> list[nn.Parameter]:
        new = [self._new(self.task_embedding, task.name)]
        keys = []
        for pair in task.descriptors.items():
            if pair not in self.pairs:
                self.pairs.append(pair)
                new.append(self._new(self.descriptor_embedding, f"d{len(self.pairs) - 1}"))
            keys.append(f"d{self.pairs.index(pair)}")
        self.descriptors_of[task.name] = keys
        return new

    def _new(self, store: nn.ParameterDict, key: str) -> nn.Parameter:
        store[key] = nn.Parameter(torch.randn(self.d_model) * 0.02)
        return store[key]

    def forward(self, tasks: list[str]) -> torch.Tensor:
        """[T, d_model]."""
        tokens = []
        for task in tasks:
            token = self.task_embedding[task]
            for key in self.descriptors_of[task]:
                token = token + self.descriptor_embedding[key]
            tokens.append(token)
        return torch.stack(tokens)


class GRec(MultiTaskModel):
    """Each (example, task) pair is a task sentence [task, example tokens...]. The example tokens are
    computed once per example and expanded over the requested tasks after the encoders."""

    def __init__(self, config: GRecConfig, pretrained_text: bool = True) -> None:
        super().__init__(config, pretrained_text)
        d = config.d_model
        self.task_tokens = TaskTokens(d, list(config.input.tasks))
        self.slot_embedding = nn.Parameter(torch.randn(1 + self.encoder.num_tokens, d) * 0.02)
        self.moe = SparseMoE(d, config.expert_hidden, config.task_names, config.router, config.skills)
        self.tower = SkilledLinear(nn.Linear(d, config.tower_hidden),
                                   make_adapter(d, config.tower_hidden, config.task_names, config.skills))

    def sentences(self, examples: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
        """Task sentences [T * B, 1 + n, d], task-major: rows t*B .. (t+1)*B-1 are task t."""
        num_tasks, (size, n, d) = task_tokens.shape[0], examples.shape
        task_part = task_tokens[:, None, None, :].expand(num_tasks, size, 1, d)
        example_part = examples.unsqueeze(0).expand(num_tasks, size, n, d)
        sentences = torch.cat([task_part, example_part], dim=2).reshape(num_tasks * size, 1 + n, d)
        return sentences + self.slot_embedding

    def encode_sentences(self, examples: torch.Tensor, task_tokens: torch.Tensor) -> torch.Tensor:
        """The sentence representation: the encoder output at the task position, [T * B, d]."""
        return self.sentence_encoder(self.sentences(examples, task_tokens))[:, 0]

    def task_hidden(self, batch: Batch, tasks: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                                   RouterStats]:
        examples = self.encode_examples(batch)
        task_tokens = self.task_tokens(tasks)
        sentence = self.encode_sentences(examples, task_tokens)
        task_index = torch.arange(len(tasks), device=sentence.device).repeat_interleave(batch.size)
        mixed, routing, stats = self.moe(sentence, task_tokens[task_index], task_index, tasks)
        hidden = F.gelu(self.tower(mixed, task_index, tasks))
        aux = {"load_balance": load_balancing_loss(routing.probs, routing.expert_index),
               "router_z": router_z_loss(routing.logits)}
        return dict(zip(tasks, hidden.split(batch.size))), aux, stats

    # ---- C-Poly introspection ---------------------------------------------------------------------
    def skill_adapters(self) -> dict[str, SkillAdapter]:
        adapters = {f"moe.{name}": adapter for name, adapter in self.moe.adapters().items()}
        if self.tower.adapter is not None:
            adapters["tower"] = self.tower.adapter
        return adapters

    def allocation_matrices(self) -> dict[str, torch.Tensor]:
        """Eval-time task x common-skill weights [T, A] of every adapted layer (rows: task_names)."""
        return {name: adapter.allocation_matrix(self.task_names) for name, adapter in self.skill_adapters().items()}

    def parameters_per_task(self, task: TaskSpec) -> int:
        """What adding `task` costs in parameters (formula; see parameters_added_by_task)."""
        return parameters_added_by_task(self.config, task)

    # ---- per-task sub-model and new tasks -----------------------------------------------------------
    def export_task(self, task: str) -> TaskSubModel:
        """An inference module for one task (router.mode 'task'): only the experts the task is routed
        to, with its skills merged; it shares the encoders with this model."""
        return TaskSubModel(self, task)

    def add_task(self, task: TaskSpec) -> list[nn.Parameter]:
        """Adds a task and freezes everything else: only the new task's skills, allocation row, task
        token and head are trainable (returned). The existing tasks' outputs do not change."""
        self.config = self.config.with_task(task)
        self.collator.spec = self.config.input
        device = self.slot_embedding.device
        new = self.task_tokens.add_task(task)
        new += self.moe.add_task(task.name)
        if self.tower.adapter is not None:
            new += self.tower.adapter.add_task(task.name)
        new += self._add_head(task)
        self.to(device)
        new_ids = {id(p) for p in new}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in new_ids)
        return new


def parameters_added_by_task(config: GRecConfig, task: TaskSpec) -> int:
    """Parameters a new task adds to a GRec model: its task token (+ unseen descriptor values), its
    exclusive skills and mixing rows in every adapted layer, its head (and loss weight)."""
    d, hidden, tower = config.d_model, config.expert_hidden, config.tower_hidden
    known = descriptor_pairs([t for t in config.input.tasks if t.name != task.name])
    token = d * (1 + sum(1 for pair in task.descriptors.items() if pair not in known))
    banks = 1 if config.skills.share_across_experts else config.router.num_experts
    skills = banks * (adapter_parameters_per_task(d, hidden, config.skills)
                      + adapter_parameters_per_task(hidden, d, config.skills))
    skills += adapter_parameters_per_task(d, tower, config.skills)
    uncertainty = 1 if config.losses.weighting == "uncertainty" else 0
    return token + skills + head_parameters(task, tower) + uncertainty
