"""The sparse mixture-of-experts layer: each expert is a feed-forward block whose linear layers carry
C-Poly skills; only the experts a sentence is routed to run (expert-major: one pass per used expert
over the sentences routed to it)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from grec.config import RouterConfig, SkillConfig
from grec.router import Routing, RouterStats, TaskSentenceRouter
from grec.skills import SkillAdapter, adapter_parameters_per_task, make_adapter


class ExpertSkills(nn.Module):
    """Skill adapters of an expert's two linear layers (d -> hidden, hidden -> d)."""

    def __init__(self, d_model: int, hidden: int, tasks: list[str], config: SkillConfig) -> None:
        super().__init__()
        self.up = make_adapter(d_model, hidden, tasks, config)
        self.down = make_adapter(hidden, d_model, tasks, config)

    def add_task(self, task: str) -> list[nn.Parameter]:
        return [p for adapter in (self.up, self.down) if adapter is not None for p in adapter.add_task(task)]


class Expert(nn.Module):
    """The base feed-forward block of one expert: down(gelu(up(x))), plus skill deltas."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, hidden)
        self.down = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor, skills: ExpertSkills, task_index: torch.Tensor, tasks: list[str]) -> torch.Tensor:
        h = self.up(x)
        if skills.up is not None:
            h = h + skills.up(x, task_index, tasks)
        h = F.gelu(h)
        out = self.down(h)
        if skills.down is not None:
            out = out + skills.down(h, task_index, tasks)
        return out

    @torch.no_grad()
    def merged(self, skills: ExpertSkills, task: str) -> MergedExpert:
        up, down = self.up.weight.clone(), self.down.weight.clone()
        if skills.up is not None:
            up += skills.up.delta_weight(task)
        if skills.down is not None:
            down += skills.down.delta_weight(task)
        return MergedExpert(up, self.up.bias.clone(), down, self.down.bias.clone())


class MergedExpert(nn.Module):
    """One expert with one task's skills merged into its weights (inference only)."""

    def __init__(self, up_weight: torch.Tensor, up_bias: torch.Tensor, down_weight: torch.Tensor,
                 down_bias: torch.Tensor) -> None:
        super().__init__()
        self.up = nn.Linear(up_weight.shape[1], up_weight.shape[0]).requires_grad_(False)
        self.down = nn.Linear(down_weight.shape[1], down_weight.shape[0]).requires_grad_(False)
        for linear, weight, bias in ((self.up, up_weight, up_bias), (self.down, down_weight, down_bias)):
            linear.to(weight.device, weight.dtype)
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.gelu(self.up(x)))


class SparseMoE(nn.Module):
    """y = x + sum_k gate_k * expert_k(x) over each sentence's top-k experts."""

    def __init__(self, d_model: int, hidden: int, tasks: list[str], router: RouterConfig, skills: SkillConfig) -> None:
        super().__init__()
        self.router = TaskSentenceRouter(d_model, router)
        self.experts = nn.ModuleList(Expert(d_model, hidden) for _ in range(router.num_experts))
        num_banks = 1 if skills.share_across_experts else router.num_experts
        self.skills = nn.ModuleList(ExpertSkills(d_model, hidden, tasks, skills) for _ in range(num_banks))
        self.d_model, self.hidden = d_model, hidden

    def skills_of(self, expert: int) -> ExpertSkills:
        return self.skills[0] if len(self.skills) == 1 else self.skills[expert]

    def add_task(self, task: str) -> list[nn.Parameter]:
        return [p for bank in self.skills for p in bank.add_task(task)]

    def parameters_per_task(self, config: SkillConfig) -> int:
        per_bank = (adapter_parameters_per_task(self.d_model, self.hidden, config)
                    + adapter_parameters_per_task(self.hidden, self.d_model, config))
        return per_bank * len(self.skills)

    def adapters(self) -> dict[str, SkillAdapter]:
        """Every skill adapter of the layer by a readable name (for allocation heatmaps)."""
        found = {}
        for i, bank in enumerate(self.skills):
            prefix = "experts" if len(self.skills) == 1 else f"expert{i}"
            for part in ("up", "down"):
                adapter = getattr(bank, part)
                if adapter is not None:
                    found[f"{prefix}.{part}"] = adapter
        return found

    def forward(self, x: torch.Tensor, task_repr: torch.Tensor, task_index: torch.Tensor,
                tasks: list[str]) -> tuple[torch.Tensor, Routing, RouterStats]:
        routing = self.router(task_repr, x)
        combined = torch.zeros_like(x)
        # In training every expert runs, even on no rows (its gradients are then zeros, not
        # missing): data-parallel engines (DeepSpeed ZeRO, DDP) reduce the same gradient buckets on
        # every rank, and a rank whose batch skipped an expert would otherwise reduce fewer bytes.
        if self.training and torch.is_grad_enabled():
            experts = range(len(self.experts))
        else:
            experts = torch.unique(routing.expert_index[routing.kept]).tolist()
        for expert in experts:
            rows, rank = torch.nonzero((routing.expert_index == expert) & routing.kept, as_tuple=True)
            out = self.experts[expert](x[rows], self.skills_of(expert), task_index[rows], tasks)
            combined.index_add_(0, rows, routing.gates[rows, rank].unsqueeze(-1).to(out.dtype) * out)
        return x + combined, routing, self.router.statistics(routing, task_index, tasks)
