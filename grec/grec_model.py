"""GRec: shared-prefix task sentences, a task-sentence routed sparse MoE with C-Poly skills, a
skilled tower and a head per task; adding a task to a trained model and taking one task's sub-model
out of it (grec/export.py). Every per-task stage runs grouped over the requested tasks (task-major
[T, B, .] tensors), so scoring all T tasks of an example costs T small groups of work on top of one
pass of the example encoders, not T whole models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grec.config import GRecConfig
from grec.export import SharedEncoders, TaskSnapshot, TaskSubModel
from grec.heads import head_parameters
from grec.model import MultiTaskModel
from grec.moe import SparseMoE
from grec.router import RouterStats
from grec.sentence import TaskSentenceEncoder
from grec.skills import SkillAdapter, SkilledLinear, adapter_parameters_per_task, make_adapter
from grec.spec import TaskSpec
from grec.tasks import copy_task_parameters, train_only


def descriptor_pairs(tasks: list[TaskSpec]) -> list[tuple[str, str]]:
    """Every (descriptor, value) pair in order of first use: a stable index for its embedding."""
    pairs: list[tuple[str, str]] = []
    for task in tasks:
        for pair in task.descriptors.items():
            if pair not in pairs:
                pairs.append(pair)
    return pairs


class TaskTokens(nn.Module):
    """Task token = the task's own embedding + the embeddings of its descriptors (type, scenario ...).
    One parameter per task and per descriptor value, so adding a task adds parameters without
    touching the existing ones."""

    def __init__(self, d_model: int, tasks: list[TaskSpec]) -> None:
        super().__init__()
        self.d_model = d_model
        self.task_embedding = nn.ParameterDict()
        self.descriptor_embedding = nn.ParameterDict()  # "d<i>" for descriptor_pairs()[i]
        self.pairs: list[tuple[str, str]] = []
        self.descriptors_of: dict[str, list[int]] = {}
        self._membership: dict[tuple[tuple[str, ...], torch.device], torch.Tensor] = {}
        for task in tasks:
            self.add_task(task)

    def add_task(self, task: TaskSpec) -> list[nn.Parameter]:
        new = [self._new(self.task_embedding, task.name)]
        indices = []
        for pair in task.descriptors.items():
            if pair not in self.pairs:
                self.pairs.append(pair)
                new.append(self._new(self.descriptor_embedding, f"d{len(self.pairs) - 1}"))
            indices.append(self.pairs.index(pair))
        self.descriptors_of[task.name] = indices
        self._membership = {}
        return new

    def _new(self, store: nn.ParameterDict, key: str) -> nn.Parameter:
        store[key] = nn.Parameter(torch.randn(self.d_model) * 0.02)
        return store[key]

    def membership(self, tasks: list[str], device: torch.device) -> torch.Tensor:
        """[T, P]: 1 where task t has descriptor value p."""
        key = (tuple(tasks), device)
        if key not in self._membership:
            matrix = torch.zeros(len(tasks), len(self.pairs), device=device)
            for row, task in enumerate(tasks):
                matrix[row, self.descriptors_of[task]] = 1.0
            self._membership[key] = matrix
        return self._membership[key]

    def forward(self, tasks: list[str]) -> torch.Tensor:
        """[T, d_model]."""
        tokens = torch.stack([self.task_embedding[task] for task in tasks])
        if self.pairs:
            descriptors = torch.stack([self.descriptor_embedding[f"d{i}"] for i in range(len(self.pairs))])
            tokens = tokens + self.membership(tasks, tokens.device).to(tokens.dtype) @ descriptors
        return tokens


class GRec(MultiTaskModel):
    """Example tokens are encoded once per example; each requested task's token reads them through
    the task-sentence encoder; the sentences go through the MoE, the skilled tower and the heads."""

    def __init__(self, config: GRecConfig, pretrained_text: bool = True) -> None:
        super().__init__(config, pretrained_text)
        d = config.d_model
        self.task_tokens = TaskTokens(d, list(config.input.tasks))
        self.sentence_encoder = TaskSentenceEncoder(config.sentence_layers, d, config.num_heads, config.ffn_hidden,
                                                    config.dropout, self.encoder.num_tokens)
        # The shared experts read the example through a query of its own, which no task owns.
        self.shared_query = nn.Parameter(torch.randn(d) * 0.02) if config.router.shared_experts else None
        self.moe = SparseMoE(d, config.expert_hidden, config.task_names, config.router, config.skills)
        self.tower = SkilledLinear(nn.Linear(d, config.tower_hidden),
                                   make_adapter(d, config.tower_hidden, config.task_names, config.skills))

    def queries(self, task_tokens: torch.Tensor) -> torch.Tensor:
        """The sentence encoder's query tokens: the tasks', then the shared experts' query."""
        if self.shared_query is None:
            return task_tokens
        return torch.cat([task_tokens, self.shared_query.unsqueeze(0).to(task_tokens.dtype)])

    def task_hidden(self, examples: torch.Tensor, tasks: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                                             RouterStats]:
        layout = self.layout(tasks, examples.device)
        all_tokens = self.task_tokens(self.task_names)  # task routing decides for every task
        sentences = self.sentence_encoder(examples, self.queries(all_tokens[layout.requested]))
        shared_input = sentences[len(tasks)] if self.shared_query is not None else None
        mixed, routing, stats = self.moe(sentences[:len(tasks)], all_tokens, layout.requested, tasks, shared_input)
        tower_mix = self.tower.adapter.mix(tasks) if self.tower.adapter is not None else None
        hidden = F.gelu(self.tower(mixed, tower_mix))
        return hidden, {"load_balance": routing.load_balance, "router_z": routing.router_z}, stats

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
        if self.config.router.mode != "task":
            raise ValueError(f"export_task needs router.mode 'task' (routing known per task), "
                             f"not {self.config.router.mode!r}")
        self.config.check_tasks([task])
        with torch.no_grad():
            all_tokens = self.task_tokens(self.task_names)
            index = self.task_names.index(task)
            queries = self.queries(all_tokens[index:index + 1]).detach().clone()
            expert_ids, gates, shared_gates = self.moe.router.route_task(all_tokens, index)
            routed, shared = self.moe.merged_experts(task, expert_ids, gates, shared_gates)
            own = TaskSnapshot(self.heads[task], queries, expert_ids, routed, shared, self.tower.merged(task))
        encoders = SharedEncoders(self.collator, self.sparse_arch, self.encoder, self.sentence_encoder)
        return TaskSubModel(task, encoders, own, self.precision)

    def add_task(self, task: TaskSpec, like: str | None = None) -> list[nn.Parameter]:
        """Adds a task and freezes everything else: only the new task's skills, allocation row, task
        token and head are trainable (returned). The existing tasks' outputs do not change.
        `like`: an existing task of the same kind whose task-specific parameters the new task starts
        from (so it first predicts what that task does), instead of a fresh start."""
        if like is not None:
            known = {t.name: t for t in self.config.input.tasks}
            if like not in known:
                raise ValueError(f"add_task like={like!r}: no such task; this model has {sorted(known)}")
            if (known[like].kind, known[like].num_classes) != (task.kind, task.num_classes):
                raise ValueError(f"add_task like={like!r}: a {known[like].kind} task cannot start a "
                                 f"{task.kind} task {task.name!r}; pick a task of the same kind")
        self.config = self.config.with_task(task)
        self.collator.spec = self.config.input
        device = self.task_tokens.task_embedding[self.task_names[0]].device
        new = self.task_tokens.add_task(task)
        new += self.moe.add_task(task.name)
        if self.tower.adapter is not None:
            new += self.tower.adapter.add_task(task.name)
        new += self._add_head(task)
        self.to(device)
        if like is not None:
            copy_task_parameters(self, like, task.name)
        train_only(self, new)
        return new


def parameters_added_by_task(config: GRecConfig, task: TaskSpec) -> int:
    """Parameters a new task adds to a GRec model: its task token (+ unseen descriptor values), its
    exclusive skills and mixing rows in every adapted layer, its head (and loss weight)."""
    d, hidden, tower = config.d_model, config.expert_hidden, config.tower_hidden
    known = descriptor_pairs([t for t in config.input.tasks if t.name != task.name])
    token = d * (1 + sum(1 for pair in task.descriptors.items() if pair not in known))
    banks = 1 if config.skills.share_across_experts else config.router.num_experts
    routed = config.router.top_k > 0  # shared experts alone carry no up-projection skills
    skills = (adapter_parameters_per_task(d, hidden, config.skills, banks) * routed
              + adapter_parameters_per_task(hidden, d, config.skills, banks)
              + adapter_parameters_per_task(d, tower, config.skills))
    uncertainty = 1 if config.losses.weighting == "uncertainty" else 0
    return token + skills + head_parameters(task, tower) + uncertainty
