"""The task-sentence router: top-k of E experts with capacity, jitter, auxiliary losses and
per-task expert load statistics."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from grec.config import RouterConfig


class Routing(NamedTuple):
    """A router's decision. Records returned by modules are NamedTuples, not dataclasses, so that
    wrappers tracking module outputs (DeepSpeed ZeRO-3's gather-for-backward hooks) see the tensors."""

    expert_index: torch.Tensor  # [N, k] chosen experts, best first
    gates: torch.Tensor  # [N, k] combine weights (0 where the assignment overflowed capacity)
    kept: torch.Tensor  # [N, k] bool: the assignment fits in its expert's capacity
    probs: torch.Tensor  # [N, E] router softmax
    logits: torch.Tensor  # [N, E]


class RouterStats(NamedTuple):
    """Per-task expert statistics of one forward pass (rows follow `tasks`)."""

    tasks: list[str]
    expert_load: torch.Tensor  # [T, E] number of (sentence, expert) assignments that ran
    router_probs: torch.Tensor  # [T, E] mean router probability
    dropped_fraction: torch.Tensor  # scalar: assignments that overflowed capacity / all assignments

    def load_matrix(self, all_tasks: list[str]) -> torch.Tensor:
        """expert_load laid out over `all_tasks` (zeros for tasks not in this pass), to accumulate."""
        matrix = self.expert_load.new_zeros(len(all_tasks), self.expert_load.shape[1])
        for row, task in enumerate(self.tasks):
            matrix[all_tasks.index(task)] = self.expert_load[row]
        return matrix


def load_balancing_loss(probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """Switch Transformer: E * sum_e f_e * P_e, f_e the fraction of assignments to e, P_e the mean
    probability of e. Equals 1 when routing is uniform."""
    num_experts = probs.shape[-1]
    counts = torch.zeros(num_experts, device=probs.device, dtype=probs.dtype)
    counts.index_add_(0, expert_index.reshape(-1), torch.ones(expert_index.numel(), device=probs.device,
                                                              dtype=probs.dtype))
    fraction = counts / expert_index.numel()
    return num_experts * (fraction * probs.mean(0)).sum()


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """ST-MoE: mean squared log-partition; keeps router logits small and stable."""
    return torch.logsumexp(logits, dim=-1).pow(2).mean()


class TaskSentenceRouter(nn.Module):
    """Routes each task sentence to its top-k experts. Its input depends on the mode: `task` the
    task representation only (a task's experts are fixed at eval), `sentence` the pooled sentence,
    `task-sentence` both concatenated."""

    def __init__(self, d_model: int, config: RouterConfig) -> None:
        super().__init__()
        self.config = config
        in_features = 2 * d_model if config.mode == "task-sentence" else d_model
        self.project = nn.Linear(in_features, config.num_experts, bias=False)

    def router_input(self, task_repr: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        if self.config.mode == "task":
            return task_repr
        if self.config.mode == "sentence":
            return sentence
        return torch.cat([task_repr, sentence], dim=-1)

    def forward(self, task_repr: torch.Tensor, sentence: torch.Tensor) -> Routing:
        x = self.router_input(task_repr, sentence)
        if self.training and self.config.jitter > 0:  # multiplicative jitter (Switch), training only
            eps = self.config.jitter
            x = x * torch.empty_like(x).uniform_(1.0 - eps, 1.0 + eps)
        logits = self.project(x).float()
        probs = torch.softmax(logits, dim=-1)
        top_probs, expert_index = probs.topk(self.config.top_k, dim=-1)
        # top-1 keeps the raw probability (the router learns through it); top-k>1 renormalizes.
        gates = top_probs if self.config.top_k == 1 else top_probs / top_probs.sum(-1, keepdim=True)
        kept = self._within_capacity(expert_index) if self.training else torch.ones_like(expert_index, dtype=torch.bool)
        return Routing(expert_index, gates * kept, kept, probs, logits)

    def capacity(self, num_tokens: int) -> int:
        c = self.config
        return max(1, math.ceil(c.capacity_factor * num_tokens * c.top_k / c.num_experts))

    def _within_capacity(self, expert_index: torch.Tensor) -> torch.Tensor:
        """First choices fill the experts before second choices; within a choice rank, earlier
        sentences first. Assignments past an expert's capacity are dropped."""
        num_tokens, top_k = expert_index.shape
        capacity = self.capacity(num_tokens)
        one_hot = torch.nn.functional.one_hot(expert_index, self.config.num_experts)  # [N, k, E]
        filled = torch.zeros(self.config.num_experts, dtype=torch.long, device=expert_index.device)
        kept = []
        for rank in range(top_k):
            mask = one_hot[:, rank]  # [N, E]
            position = (torch.cumsum(mask, dim=0) - 1 + filled) * mask
            kept.append(((position < capacity) & (mask > 0)).any(dim=-1))
            filled = filled + mask.sum(0)
        return torch.stack(kept, dim=1)

    def statistics(self, routing: Routing, task_index: torch.Tensor, tasks: list[str]) -> RouterStats:
        num_experts = self.config.num_experts
        with torch.no_grad():
            flat = (task_index.unsqueeze(1) * num_experts + routing.expert_index)[routing.kept]
            load = torch.zeros(len(tasks) * num_experts, device=flat.device)
            load.index_add_(0, flat, torch.ones_like(flat, dtype=load.dtype))
            probs = torch.zeros(len(tasks), num_experts, device=flat.device)
            probs.index_add_(0, task_index, routing.probs.detach())
            counts = torch.bincount(task_index, minlength=len(tasks)).clamp_min(1).unsqueeze(1)
            dropped = 1.0 - routing.kept.float().mean()
        return RouterStats(list(tasks), load.view(len(tasks), num_experts), probs / counts, dropped)

    @torch.no_grad()
    def route_task(self, task_repr: torch.Tensor) -> tuple[list[int], list[float]]:
        """Eval routing of one task (mode `task` only): its experts and their gates."""
        if self.config.mode != "task":
            raise ValueError(f"routing of a task alone needs router.mode 'task', not {self.config.mode!r}")
        was_training = self.training
        self.train(False)
        try:
            routing = self(task_repr.unsqueeze(0), task_repr.unsqueeze(0))
        finally:
            self.train(was_training)
        return routing.expert_index[0].tolist(), routing.gates[0].tolist()
