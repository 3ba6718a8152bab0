"""The task-sentence router: top-k of E routed experts (dropless unless capped), jitter, auxiliary losses and
per-task expert load statistics, plus the gates of the shared experts.

Layouts are task-major. With `task` routing a decision is made per task ([T, k]): every row of a task
goes to the same experts, so the router runs once per task, not once per row. The other modes decide
per sentence ([T, B, k])."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from grec.config import RouterConfig


class Routing(NamedTuple):
    """A router's decision for the requested tasks. Records returned by modules are NamedTuples, not
    dataclasses, so that wrappers tracking module outputs (DeepSpeed ZeRO-3's gather-for-backward
    hooks) see the tensors."""

    expert_index: torch.Tensor  # [T, k] (task routing) or [T, B, k]: routed experts, best first
    gates: torch.Tensor  # like expert_index: combine weights, 0 where the assignment overflowed an opt-in capacity
    kept: torch.Tensor  # like expert_index, bool: the assignment runs (all, unless a capacity is set)
    probs: torch.Tensor  # [T, E] or [T, B, E]: softmax over the routed experts
    shared_gates: torch.Tensor  # [T, m] or [T, B, m]: softmax over the shared experts
    load_balance: torch.Tensor  # scalar auxiliary loss (Switch)
    router_z: torch.Tensor  # scalar auxiliary loss (ST-MoE)


class RouterStats(NamedTuple):
    """Per-task expert statistics of one forward pass (rows follow `tasks`)."""

    tasks: list[str]
    expert_load: torch.Tensor  # [T, E] number of (sentence, routed expert) assignments that ran
    router_probs: torch.Tensor  # [T, E] mean router probability
    dropped_fraction: torch.Tensor  # scalar: assignments that overflowed capacity / all assignments

    def load_matrix(self, all_tasks: list[str]) -> torch.Tensor:
        """expert_load laid out over `all_tasks` (zeros for tasks not in this pass), to accumulate."""
        matrix = self.expert_load.new_zeros(len(all_tasks), self.expert_load.shape[1])
        rows = torch.tensor([all_tasks.index(task) for task in self.tasks], device=matrix.device)
        return matrix.index_copy(0, rows, self.expert_load)


def load_balancing_loss(probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """Switch Transformer: E * sum_e f_e * P_e, f_e the fraction of assignments to e, P_e the mean
    probability of e, over every leading position of probs [..., E] / expert_index [..., k]. Equals 1
    when routing is uniform."""
    num_experts = probs.shape[-1]
    if expert_index.numel() == 0:
        return probs.sum() * 0.0
    counts = torch.bincount(expert_index.reshape(-1), minlength=num_experts).to(probs.dtype)
    fraction = counts / expert_index.numel()
    return num_experts * (fraction * probs.reshape(-1, num_experts).mean(0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE: mean squared log-partition; keeps router logits small and stable."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


def positions_in_expert(expert: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(position of each assignment among its expert's assignments, in their order [A]; assignments
    per expert [num_experts]) of `expert` [A]. One stable sort, no [A, E] one-hot."""
    order = torch.argsort(expert, stable=True)
    counts = torch.bincount(expert, minlength=num_experts)
    position = torch.empty_like(expert)
    position[order] = torch.arange(expert.numel(), device=expert.device) - (counts.cumsum(0) - counts)[expert[order]]
    return position, counts


def within_capacity(expert_index: torch.Tensor, num_experts: int, capacity: int) -> torch.Tensor:
    """kept [N, k]: assignments within their expert's capacity. First choices fill the experts before
    second choices; within a choice rank, earlier rows first."""
    num_rows, top_k = expert_index.shape
    # rank-major: every first choice, then every second ...
    position, _ = positions_in_expert(expert_index.t().reshape(-1), num_experts)
    return (position < capacity).view(top_k, num_rows).t()


class TaskSentenceRouter(nn.Module):
    """Routes each task sentence to its top-k routed experts and weighs the shared experts. Its input
    depends on the mode: `task` the task token only (a task's experts are fixed at eval), `sentence`
    the sentence, `task-sentence` both concatenated. One projection gives the shared experts' logits
    (first `shared_experts` columns) and the routed experts' logits (the rest)."""

    def __init__(self, d_model: int, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        self.num_shared = config.shared_experts
        self.num_routed = config.num_experts if config.top_k else 0
        in_features = 2 * d_model if config.mode == "task-sentence" else d_model
        self.project = nn.Linear(in_features, self.num_shared + self.num_routed, bias=False)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.config.jitter > 0:  # multiplicative jitter (Switch), training only
            eps = self.config.jitter
            x = x * torch.empty_like(x).uniform_(1.0 - eps, 1.0 + eps)
        return self.project(x).float()

    def capacity(self, assignments: int) -> int | None:
        """Most assignments an expert takes in training, for `assignments` = sentences x top_k (None:
        dropless, the default)."""
        c = self.config
        if c.capacity_factor is None:
            return None
        return max(1, math.ceil(c.capacity_factor * assignments / c.num_experts))

    def _decide(self, logits: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(expert_index, gates, kept, probs, shared_gates) of logits [N, m + E]; an opt-in capacity
        (training only) over all N rows' assignments."""
        m, k = self.num_shared, self.config.top_k
        shared_gates = torch.softmax(logits[:, :m], dim=-1)
        probs = torch.softmax(logits[:, m:], dim=-1)
        top_probs, expert_index = probs.topk(k, dim=-1)
        # top-1 keeps the raw probability (the router learns through it); top-k>1 renormalizes.
        gates = top_probs if k <= 1 else top_probs / top_probs.sum(-1, keepdim=True)
        kept = torch.ones_like(expert_index, dtype=torch.bool)
        capacity = self.capacity(expert_index.numel()) if self.training and k else None
        if capacity is not None:
            kept = within_capacity(expert_index, self.num_routed, capacity)
        return expert_index, gates * kept, kept, probs, shared_gates

    def route_tasks(self, all_task_tokens: torch.Tensor, requested: torch.Tensor) -> Routing:
        """`task` routing. The decision is made for every task of the model (all_task_tokens [T_all, d])
        and read for the requested ones (indices `requested` [T]): a task's experts never depend on
        which other tasks are in the batch, and the load-balancing loss is global over all tasks (SMES)."""
        logits = self._logits(all_task_tokens)
        expert_index, gates, kept, probs, shared_gates = self._decide(logits)
        return Routing(expert_index[requested], gates[requested], kept[requested], probs[requested],
                       shared_gates[requested], load_balancing_loss(probs, expert_index), router_z_loss(logits))

    def route_sentences(self, task_repr: torch.Tensor, sentence: torch.Tensor) -> Routing:
        """`sentence` / `task-sentence` routing of sentences [T, B, d] (task tokens [T, d])."""
        num_tasks, size, d = sentence.shape
        x = sentence
        if self.config.mode == "task-sentence":
            x = torch.cat([task_repr.unsqueeze(1).expand(num_tasks, size, d), sentence], dim=-1)
        logits = self._logits(x.reshape(num_tasks * size, -1))
        expert_index, gates, kept, probs, shared_gates = self._decide(logits)
        shape = (num_tasks, size)
        return Routing(expert_index.view(*shape, -1), gates.view(*shape, -1), kept.view(*shape, -1),
                       probs.view(*shape, -1), shared_gates.view(*shape, -1),
                       load_balancing_loss(probs, expert_index), router_z_loss(logits))

    def statistics(self, routing: Routing, size: int, tasks: list[str]) -> RouterStats:
        """Per-task load of the routed experts [T, num_experts]; `size` rows per task."""
        num_experts = self.config.num_experts
        with torch.no_grad():
            kept, index = routing.kept.float(), routing.expert_index
            if index.dim() == 3:  # per-sentence routing: every row's assignments of a task add up
                kept, index, probs = kept.flatten(1), index.flatten(1), routing.probs.mean(1)
            else:  # task routing: a kept (task, expert) assignment ran on all `size` rows
                kept, probs = kept * size, routing.probs
            load = kept.new_zeros(len(tasks), num_experts).scatter_add_(1, index, kept)
            if not self.num_routed:
                probs = load.clone()
            dropped = 1.0 - routing.kept.float().mean() if routing.kept.numel() else load.new_zeros(())
        return RouterStats(list(tasks), load, probs.float(), dropped)

    @torch.no_grad()
    def route_task(self, all_task_tokens: torch.Tensor, task: int) -> tuple[list[int], list[float], list[float]]:
        """Eval routing of one task (mode `task` only): its routed experts, their gates and the shared
        experts' gates."""
        if self.config.mode != "task":
            raise ValueError(f"routing of a task alone needs router.mode 'task', not {self.config.mode!r}")
        was_training = self.training
        self.train(False)
        try:
            routing = self.route_tasks(all_task_tokens, torch.tensor([task], device=all_task_tokens.device))
        finally:
            self.train(was_training)
        return routing.expert_index[0].tolist(), routing.gates[0].tolist(), routing.shared_gates[0].tolist()
