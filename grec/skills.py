"""C-Poly skills: a shared base linear plus low-rank (LoRA) skills, A task-common ones mixed by a
learned task x skill allocation and B exclusive ones per task. CGC-LoRA is the same module with a
softmax gate over common and exclusive skills driven by the task id.

For task t:  h = W0 x + sum_i w[t,i] up_i down_i x + sum_j u[t,j] up_tj down_tj x
  cpoly:    w[t] = normalize(RelaxedBernoulli(logits[t]).rsample()) in training,
            normalize(sigmoid(logits[t])) at eval; u = 1
  cgc_lora: [w[t], u[t]] = softmax(gate[t])
The weights depend on the task only, so at eval a task's mixture collapses to one delta (merge).

Cost: the mixing weights are drawn once per forward pass (`SkillAdapter.mix`) and every use of the
adapter in that pass reads the same draw. Skills run grouped: rows are laid out in groups that each
belong to one task (`delta(x [T, N, in], mix)`), or a group's skill delta is added to its weight
(`group_weights`), so a row only ever meets its own task's skills, in one batched matmul for all
groups.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.distributions import RelaxedBernoulli

from grec.config import SkillConfig

_NORMALIZE_EPS = 1e-6


def adapter_parameters_per_task(in_features: int, out_features: int, config: SkillConfig, banks: int = 1) -> int:
    """Parameters one task adds to one adapted linear layer (`banks` skill banks)."""
    if config.kind == "none":
        return 0
    exclusive = config.num_exclusive * config.rank * (in_features + out_features)
    mixing = config.num_common if config.kind == "cpoly" else config.num_common + config.num_exclusive
    return banks * (exclusive + mixing)


class SkillMix(NamedTuple):
    """One forward pass's mixing weights of one adapter for the requested tasks (rows follow `tasks`)."""

    tasks: tuple[str, ...]
    common: torch.Tensor  # [T, banks, A]
    exclusive: torch.Tensor  # [T, banks, B]


class SkillAdapter(nn.Module):
    """The skill delta of one linear shape, with `banks` independent skill banks (one per expert when
    experts do not share skills). Parameters: common_down [banks, A, r, in], common_up [banks, A, out, r]
    and, per task, exclusive_down [banks, B, r, in], exclusive_up [banks, B, out, r] and mixing logits
    [banks, A] (cpoly) or [banks, A + B] (cgc_lora)."""

    def __init__(self, in_features: int, out_features: int, tasks: list[str], config: SkillConfig,
                 banks: int = 1) -> None:
        super().__init__()
        if config.kind not in ("cpoly", "cgc_lora"):
            raise ValueError(f"SkillAdapter needs skills.kind cpoly or cgc_lora, got {config.kind!r}")
        self.in_features, self.out_features, self.banks = in_features, out_features, banks
        self.kind = config.kind
        self.num_common, self.num_exclusive, self.rank = config.num_common, config.num_exclusive, config.rank
        self.temperature = config.temperature
        self.common_down = nn.Parameter(self._down(self.num_common))
        self.common_up = nn.Parameter(torch.zeros(banks, self.num_common, out_features, self.rank))
        self.exclusive_down = nn.ParameterDict()
        self.exclusive_up = nn.ParameterDict()
        self.mixing = nn.ParameterDict()
        for task in tasks:
            self.add_task(task)

    def _down(self, count: int) -> torch.Tensor:
        return torch.randn(self.banks, count, self.rank, self.in_features) / math.sqrt(self.in_features)

    @property
    def mixing_width(self) -> int:
        return self.num_common if self.kind == "cpoly" else self.num_common + self.num_exclusive

    def add_task(self, task: str) -> list[nn.Parameter]:
        """Creates the task's exclusive skills (up-projections zero: the new task starts from the
        common skills) and its mixing row; returns the new parameters."""
        new = []
        if self.num_exclusive:
            self.exclusive_down[task] = nn.Parameter(self._down(self.num_exclusive))
            self.exclusive_up[task] = nn.Parameter(torch.zeros(self.banks, self.num_exclusive, self.out_features,
                                                               self.rank))
            new += [self.exclusive_down[task], self.exclusive_up[task]]
        if self.mixing_width:
            self.mixing[task] = nn.Parameter(torch.zeros(self.banks, self.mixing_width))
            new.append(self.mixing[task])
        return new

    def mix(self, tasks: list[str] | tuple[str, ...]) -> SkillMix:
        """The mixing weights of `tasks` for one forward pass: a relaxed-Bernoulli sample per task in
        training (cpoly), the deterministic eval weights otherwise."""
        t, banks, a, b = len(tasks), self.banks, self.num_common, self.num_exclusive
        device = self.common_down.device
        if self.kind == "cgc_lora":
            gate = torch.softmax(torch.stack([self.mixing[name] for name in tasks]), dim=-1)
            return SkillMix(tuple(tasks), gate[..., :a], gate[..., a:])
        exclusive = torch.ones(t, banks, b, device=device)
        if not a:
            return SkillMix(tuple(tasks), torch.zeros(t, banks, 0, device=device), exclusive)
        logits = torch.stack([self.mixing[name] for name in tasks])
        if self.training:
            probs = RelaxedBernoulli(torch.tensor(self.temperature, device=device), logits=logits,
                                     validate_args=False).rsample()
        else:
            probs = torch.sigmoid(logits)
        return SkillMix(tuple(tasks), probs / (probs.sum(-1, keepdim=True) + _NORMALIZE_EPS), exclusive)

    def allocation_matrix(self, tasks: list[str], bank: int = 0) -> torch.Tensor:
        """Eval-time common-skill weights [T, A] of one bank (a heatmap of which task uses which skill)."""
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                return self.mix(tasks).common[:, bank].clone()
        finally:
            self.train(was_training)

    def group_weights(self, mix: SkillMix, task_index: torch.Tensor,
                       bank_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per group: the stacked down-projections [G, R, in] (already scaled by the mixing weight of
        each skill) and up-projections [G, R, out], R = (A + B) * rank: the group's delta is
        up.T @ down, applied to rows as (x @ down.T) @ up."""
        r, downs, ups, weights = self.rank, [], [], []
        if self.num_common:
            downs.append(self.common_down.flatten(1, 2)[bank_index])  # [G, A*r, in]
            ups.append(self.common_up.transpose(2, 3).flatten(1, 2)[bank_index])  # [G, A*r, out]
            weights.append(mix.common[task_index, bank_index])
        if self.num_exclusive:
            down = torch.stack([self.exclusive_down[t] for t in mix.tasks])  # [T, banks, B, r, in]
            up = torch.stack([self.exclusive_up[t] for t in mix.tasks])  # [T, banks, B, out, r]
            downs.append(down.flatten(2, 3)[task_index, bank_index])
            ups.append(up.transpose(3, 4).flatten(2, 3)[task_index, bank_index])
            weights.append(mix.exclusive[task_index, bank_index])
        weight = torch.cat(weights, dim=-1).repeat_interleave(r, dim=-1)  # [G, R]
        return torch.cat(downs, dim=1) * weight.unsqueeze(-1), torch.cat(ups, dim=1)

    def task_weights(self, mix: SkillMix) -> tuple[torch.Tensor, torch.Tensor]:
        """group_weights of one group per task (group t is task t, bank 0)."""
        index = torch.arange(len(mix.tasks), device=self.common_down.device)
        return self.group_weights(mix, index, torch.zeros_like(index))

    def delta(self, x: torch.Tensor, mix: SkillMix) -> torch.Tensor:
        """The skill delta [T, N, out] of x [T, N, in] whose group t holds rows of task `mix.tasks[t]`."""
        down, up = self.task_weights(mix)
        return torch.bmm(torch.bmm(x, down.transpose(1, 2)), up)

    def delta_weight(self, task: str, bank: int = 0) -> torch.Tensor:
        """The task's whole eval-time skill mixture in one bank as one matrix [out, in]."""
        was_training = self.training
        self.train(False)
        try:
            mix = self.mix([task])
        finally:
            self.train(was_training)
        index = torch.zeros(1, dtype=torch.long, device=self.common_down.device)
        down, up = self.group_weights(mix, index, index + bank)
        return up[0].T @ down[0]


class SkilledLinear(nn.Module):
    """A base linear layer plus an optional skill adapter, applied to task-major rows [T, N, in]."""

    def __init__(self, base: nn.Linear, adapter: SkillAdapter | None) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor, mix: SkillMix | None) -> torch.Tensor:
        """x [T, N, in], group t holding rows of task `mix.tasks[t]` -> [T, N, out]. Each task's skill
        delta is merged into its own copy of the weight first: one batched matmul, no low-rank pass
        over the rows."""
        if self.adapter is None:
            return self.base(x)
        down, up = self.adapter.task_weights(mix)
        weight = torch.baddbmm(self.base.weight, up.transpose(1, 2), down)  # [T, out, in]
        bias = self.base.bias.view(1, 1, -1) if self.base.bias is not None else x.new_zeros(1, 1, weight.shape[1])
        return torch.baddbmm(bias, x, weight.transpose(1, 2))

    @torch.no_grad()
    def merged(self, task: str) -> nn.Linear:
        """A plain linear layer with the task's skill delta merged into the base weight."""
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        merged.to(self.base.weight.device, self.base.weight.dtype)
        weight = self.base.weight.clone()
        if self.adapter is not None:
            weight += self.adapter.delta_weight(task)
        merged.weight.copy_(weight)
        if self.base.bias is not None:
            merged.bias.copy_(self.base.bias)
        return merged.requires_grad_(False)


def make_adapter(in_features: int, out_features: int, tasks: list[str], config: SkillConfig,
                 banks: int = 1) -> SkillAdapter | None:
    return None if config.kind == "none" else SkillAdapter(in_features, out_features, tasks, config, banks)
