"""Shared-Bottom, MMoE and PLE on the same encoders as GRec: the yardsticks for quality and cost.

Their input is task-agnostic: the sentence encoder over the example tokens (no task token),
mean-pooled, computed once per example. Every expert is dense: it runs for every example.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import nn

from grec.config import GRecConfig
from grec.model import MultiTaskModel
from grec.router import RouterStats
from grec.transformer import TransformerStack


def feed_forward(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))


def tower(d_model: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_model, hidden), nn.GELU())


def gate_mix(gate_logits: torch.Tensor, expert_outputs: torch.Tensor) -> torch.Tensor:
    """softmax(gate) over experts [B, E] x outputs [B, E, d] -> [B, d]."""
    return torch.einsum("be,bed->bd", torch.softmax(gate_logits, dim=-1), expert_outputs)


class DenseBaseline(MultiTaskModel):
    def __init__(self, config: GRecConfig, pretrained_text: bool = True) -> None:
        super().__init__(config, pretrained_text)
        self.sentence_encoder = TransformerStack(config.sentence_layers, config.d_model, config.num_heads,
                                                 config.ffn_hidden, config.dropout)
        self.slot_embedding = nn.Parameter(torch.randn(self.encoder.num_tokens, config.d_model) * 0.02)
        self.towers = nn.ModuleDict({t: tower(config.d_model, config.tower_hidden) for t in config.task_names})

    def shared_input(self, examples: torch.Tensor) -> torch.Tensor:
        """[B, d]: the pooled sentence encoder output of the example tokens [B, n_tokens, d]."""
        return self.sentence_encoder(examples + self.slot_embedding).mean(dim=1)

    def task_hidden(self, examples: torch.Tensor, tasks: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                                             RouterStats | None]:
        task_inputs = self.task_inputs(self.shared_input(examples), tasks)
        return torch.stack([self.towers[t](task_inputs[t]) for t in tasks]), {}, None

    @abstractmethod
    def task_inputs(self, x: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:
        """The input of each requested task's tower, [B, d] each."""


class SharedBottom(DenseBaseline):
    """One shared bottom network, a tower per task."""

    def __init__(self, config: GRecConfig, pretrained_text: bool = True) -> None:
        super().__init__(config, pretrained_text)
        self.bottom = feed_forward(config.d_model, config.baseline.bottom_hidden, config.d_model)

    def task_inputs(self, x: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:
        shared = self.bottom(x)
        return {t: shared for t in tasks}


class MMoE(DenseBaseline):
    """E shared dense experts, one softmax gate per task over all of them (Ma et al. 2018)."""

    def __init__(self, config: GRecConfig, pretrained_text: bool = True) -> None:
        super().__init__(config, pretrained_text)
        d, num_experts = config.d_model, config.baseline.num_experts
        self.experts = nn.ModuleList(feed_forward(d, config.expert_hidden, d) for _ in range(num_experts))
        self.gates = nn.ModuleDict({t: nn.Linear(d, num_experts) for t in config.task_names})

    def task_inputs(self, x: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:
        outputs = torch.stack([expert(x) for expert in self.experts], dim=1)
        return {t: gate_mix(self.gates[t](x), outputs) for t in tasks}


class PLELevel(nn.Module):
    """One Customized Gate Control level: specific experts per task and shared experts; a gate per
    task over its own and the shared experts; a shared gate over all experts (not on the last level)."""

    def __init__(self, config: GRecConfig, last: bool) -> None:
        super().__init__()
        d, hidden, base = config.d_model, config.expert_hidden, config.baseline
        tasks = config.task_names
        self.specific = nn.ModuleDict({
            t: nn.ModuleList(feed_forward(d, hidden, d) for _ in range(base.num_specific_experts)) for t in tasks
        })
        self.shared = nn.ModuleList(feed_forward(d, hidden, d) for _ in range(base.num_shared_experts))
        width = base.num_specific_experts + base.num_shared_experts
        self.gates = nn.ModuleDict({t: nn.Linear(d, width) for t in tasks})
        self.shared_gate = None if last else nn.Linear(d, base.num_specific_experts * len(tasks) + base.num_shared_experts)

    def forward(self, task_inputs: dict[str, torch.Tensor], shared_input: torch.Tensor,
                tasks: list[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        shared_out = [expert(shared_input) for expert in self.shared]
        specific_out = {t: [expert(task_inputs[t]) for expert in self.specific[t]] for t in tasks}
        outputs = {
            t: gate_mix(self.gates[t](task_inputs[t]), torch.stack(specific_out[t] + shared_out, dim=1)) for t in tasks
        }
        if self.shared_gate is None:
            return outputs, None
        every = [o for t in self.specific for o in specific_out[t]] + shared_out
        return outputs, gate_mix(self.shared_gate(shared_input), torch.stack(every, dim=1))


class PLE(DenseBaseline):
    """Progressive Layered Extraction (Tang et al. 2020): stacked CGC levels. Intermediate levels
    compute every task's experts (the shared gate reads them all); the last level only the
    requested tasks'."""

    def __init__(self, config: GRecConfig, pretrained_text: bool = True) -> None:
        super().__init__(config, pretrained_text)
        levels = config.baseline.ple_levels
        self.levels = nn.ModuleList(PLELevel(config, last=i == levels - 1) for i in range(levels))

    def task_inputs(self, x: torch.Tensor, tasks: list[str]) -> dict[str, torch.Tensor]:
        every = self.task_names
        task_inputs, shared = {t: x for t in every}, x
        for level in self.levels[:-1]:
            task_inputs, shared = level(task_inputs, shared, every)
        outputs, _ = self.levels[-1](task_inputs, shared, tasks)
        return outputs
