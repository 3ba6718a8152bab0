"""C-Poly skills: a shared base linear plus low-rank (LoRA) skills, A task-common ones mixed by a
learned task x skill allocation and B exclusive ones per task. CGC-LoRA is the same module with a
softmax gate over common and exclusive skills driven by the task id.

For task t:  h = W0 x + sum_i w[t,i] up_i down_i x + sum_j u[t,j] up_tj down_tj x
  cpoly:    w[t] = normalize(gumbel_sigmoid(logits[t])) in training, normalize(sigmoid(logits[t])) at eval; u = 1
  cgc_lora: [w[t], u[t]] = softmax(gate[t])
The weights depend on the task only, so at eval a task's mixture collapses to one delta (merge).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from grec.config import SkillConfig

_NORMALIZE_EPS = 1e-6


def gumbel_sigmoid(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """A relaxed Bernoulli sample: sigmoid((logits + logistic noise) / temperature)."""
    u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


def adapter_parameters_per_task(in_features: int, out_features: int, config: SkillConfig) -> int:
    """Parameters one task adds to one adapted linear layer."""
    if config.kind == "none":
        return 0
    exclusive = config.num_exclusive * config.rank * (in_features + out_features)
    mixing = config.num_common if config.kind == "cpoly" else config.num_common + config.num_exclusive
    return exclusive + mixing


class SkillAdapter(nn.Module):
    """The skill delta of one linear shape: forward(x, task_index, tasks) -> [N, out]."""

    def __init__(self, in_features: int, out_features: int, tasks: list[str], config: SkillConfig) -> None:
        super().__init__()
        if config.kind not in ("cpoly", "cgc_lora"):
            raise ValueError(f"SkillAdapter needs skills.kind cpoly or cgc_lora, got {config.kind!r}")
        self.in_features, self.out_features = in_features, out_features
        self.kind = config.kind
        self.num_common, self.num_exclusive, self.rank = config.num_common, config.num_exclusive, config.rank
        self.temperature = config.temperature
        self.common_down = nn.Parameter(self._down(self.num_common))
        self.common_up = nn.Parameter(torch.zeros(self.num_common, out_features, self.rank))
        self.exclusive_down = nn.ParameterDict()
        self.exclusive_up = nn.ParameterDict()
        self.mixing = nn.ParameterDict()  # cpoly: allocation logits [A]; cgc_lora: gate logits [A + B]
        for task in tasks:
            self.add_task(task)

    def _down(self, count: int) -> torch.Tensor:
        return torch.randn(count, self.rank, self.in_features) / math.sqrt(self.in_features)

    def add_task(self, task: str) -> list[nn.Parameter]:
        """Creates the task's exclusive skills (up-projections zero: the new task starts from the
        common skills) and its mixing row; returns the new parameters."""
        new = []
        if self.num_exclusive:
            self.exclusive_down[task] = nn.Parameter(self._down(self.num_exclusive))
            self.exclusive_up[task] = nn.Parameter(torch.zeros(self.num_exclusive, self.out_features, self.rank))
            new += [self.exclusive_down[task], self.exclusive_up[task]]
        width = self.num_common if self.kind == "cpoly" else self.num_common + self.num_exclusive
        if width:
            self.mixing[task] = nn.Parameter(torch.zeros(width))
            new.append(self.mixing[task])
        return new

    def task_weights(self, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(common [T, A], exclusive [T, B]) mixing weights of the given tasks."""
        device = self.common_down.device
        if self.kind == "cgc_lora":
            gate = torch.softmax(torch.stack([self.mixing[t] for t in tasks]), dim=-1)
            return gate[:, : self.num_common], gate[:, self.num_common :]
        exclusive = torch.ones(len(tasks), self.num_exclusive, device=device)
        if not self.num_common:
            return torch.zeros(len(tasks), 0, device=device), exclusive
        logits = torch.stack([self.mixing[t] for t in tasks])
        probs = gumbel_sigmoid(logits, self.temperature) if self.training else torch.sigmoid(logits)
        return probs / (probs.sum(-1, keepdim=True) + _NORMALIZE_EPS), exclusive

    def allocation_matrix(self, tasks: list[str]) -> torch.Tensor:
        """Eval-time common-skill weights [T, A] (a heatmap of which task uses which skill)."""
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                return self.task_weights(tasks)[0].clone()
        finally:
            self.train(was_training)

    def forward(self, x: torch.Tensor, task_index: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        """Skill delta [N, out] of sentences x [N, in]; task_index [N] indexes `tasks`. Written as
        dense matmuls over all requested tasks' skills, masked to each sentence's task: BLAS-friendly,
        unlike a per-sentence gather of small matrices."""
        common_w, exclusive_w = self.task_weights(tasks)
        n, r = x.shape[0], self.rank
        single = len(tasks) == 1  # one task: its weights broadcast, nothing to mask
        delta = x.new_zeros(n, self.out_features)
        if self.num_common:
            a = self.num_common
            hidden = (x @ self.common_down.reshape(a * r, -1).T).view(n, a, r)
            weights = common_w[0] if single else common_w[task_index]
            hidden = (hidden * weights.unsqueeze(-1)).reshape(n, a * r)
            delta = delta + hidden @ self.common_up.transpose(1, 2).reshape(a * r, -1)
        if self.num_exclusive:
            t, b = len(tasks), self.num_exclusive
            down = torch.stack([self.exclusive_down[name] for name in tasks])  # [T, B, r, in]
            up = torch.stack([self.exclusive_up[name] for name in tasks])  # [T, B, out, r]
            hidden = (x @ down.reshape(t * b * r, -1).T).view(n, t, b, r) * exclusive_w[None, :, :, None]
            if not single:
                own_task = torch.nn.functional.one_hot(task_index, t).to(x.dtype)
                hidden = hidden * own_task[:, :, None, None]
            delta = delta + hidden.reshape(n, t * b * r) @ up.transpose(2, 3).reshape(t * b * r, -1)
        return delta

    def delta_weight(self, task: str) -> torch.Tensor:
        """The task's whole eval-time skill mixture as one matrix [out, in]."""
        was_training = self.training
        self.train(False)
        try:
            common_w, exclusive_w = self.task_weights([task])
        finally:
            self.train(was_training)
        delta = torch.einsum("a,aor,ari->oi", common_w[0], self.common_up, self.common_down)
        if self.num_exclusive:
            delta = delta + torch.einsum("b,bor,bri->oi", exclusive_w[0], self.exclusive_up[task],
                                         self.exclusive_down[task])
        return delta


class SkilledLinear(nn.Module):
    """A base linear layer plus an optional skill adapter (own, or shared with other experts)."""

    def __init__(self, base: nn.Linear, adapter: SkillAdapter | None) -> None:
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor, task_index: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        out = self.base(x)
        if self.adapter is not None:
            out = out + self.adapter(x, task_index, tasks)
        return out

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


def make_adapter(in_features: int, out_features: int, tasks: list[str], config: SkillConfig) -> SkillAdapter | None:
    return None if config.kind == "none" else SkillAdapter(in_features, out_features, tasks, config)
