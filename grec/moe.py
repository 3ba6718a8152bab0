"""The sparse mixture-of-experts layer. Each expert is a feed-forward block (up, gelu, down) whose
linear layers carry C-Poly skills.

y[t, b] = s[t, b] + sum_k g[t, k] expert_k(s[t, b]; skills of t)                  routed experts
                  + sum_e gs[t, e] shared_e(x[b]; down skills of t)                 shared experts

Work is grouped, never a loop over experts or tasks:
- `task` routing: all rows of a task share its k experts, so each (task, expert) pair is one group of
  rows; the groups run as batched matmuls over the gathered expert weights.
- per-sentence routing: assignments are sorted by expert into blocks of rows of one expert each and
  run as one batched matmul per layer, every assignment in training as at eval (dropless).
- shared experts read the example's task-independent representation x[b] and run once per example,
  whatever the number of tasks; each task mixes their outputs with its own gate.
With one skill bank shared by the experts (the default), a task's skill delta does not depend on the
expert: the up-projection delta is computed once per (task, row), and the down-projection delta once
on the gate-weighted mix of the experts' hidden states (exact, by linearity).
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from grec.config import RouterConfig, SkillConfig
from grec.router import Routing, RouterStats, TaskSentenceRouter, positions_in_expert
from grec.skills import SkillAdapter, SkillMix, make_adapter


# Rows per block of the per-sentence expert compute. Each expert's assignments are padded to whole
# blocks, so padding is under one block per expert whatever the routing: dropless training needs no
# [experts, largest load] buffer, which an unbalanced router (every sentence to one expert) would
# make E times the batch. Each block reads its expert's weights (a gather of blocks x weights).
ROUTING_BLOCK = 32


def expert_blocks(expert: torch.Tensor, num_experts: int, block: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
    """Assignments to experts `expert` [A] laid out in blocks of `block` rows, each block one
    expert's: (block index [A], row in the block [A], each block's expert [blocks]). Assignments of
    an expert keep their order."""
    position, counts = positions_in_expert(expert, num_experts)
    blocks_per_expert = (counts + block - 1) // block
    first_block = blocks_per_expert.cumsum(0) - blocks_per_expert
    block_expert = torch.repeat_interleave(torch.arange(num_experts, device=expert.device), blocks_per_expert)
    return first_block[expert] + position // block, position % block, block_expert


# Requested task sets whose merged expert weights inference keeps (task routing): serving asks for
# the same few sets (all tasks, one task) again and again.
MERGED_TASK_SETS = 4


class ExpertBank(nn.Module):
    """`count` feed-forward experts d -> hidden -> d as stacked weights (batched matmuls, one
    parameter per layer), initialised like torch.nn.Linear."""

    def __init__(self, count: int, d_model: int, hidden: int) -> None:
        super().__init__()
        self.up_weight = nn.Parameter(self._uniform((count, hidden, d_model), d_model))
        self.up_bias = nn.Parameter(self._uniform((count, hidden), d_model))
        self.down_weight = nn.Parameter(self._uniform((count, d_model, hidden), hidden))
        self.down_bias = nn.Parameter(self._uniform((count, d_model), hidden))

    @staticmethod
    def _uniform(shape: tuple[int, ...], fan_in: int) -> torch.Tensor:
        bound = 1.0 / math.sqrt(fan_in)
        return torch.empty(shape).uniform_(-bound, bound)

    @property
    def count(self) -> int:
        return self.up_weight.shape[0]


class ExpertSkills(nn.Module):
    """Skill adapters of the experts' two linear layers (d -> hidden, hidden -> d); `banks` 1 when the
    experts share one bank, else one bank per routed expert. Shared experts carry skills on their
    down-projection only (an up-projection skill would make their hidden state per task), so without
    routed experts there is no up adapter."""

    def __init__(self, d_model: int, hidden: int, tasks: list[str], config: SkillConfig, banks: int,
                 routed: bool) -> None:
        super().__init__()
        self.up = make_adapter(d_model, hidden, tasks, config, banks) if routed else None
        self.down = make_adapter(hidden, d_model, tasks, config, banks)

    def add_task(self, task: str) -> list[nn.Parameter]:
        return [p for adapter in (self.up, self.down) if adapter is not None for p in adapter.add_task(task)]

    def mixes(self, tasks: list[str]) -> tuple[SkillMix | None, SkillMix | None]:
        return tuple(None if adapter is None else adapter.mix(tasks) for adapter in (self.up, self.down))


class MergedExperts(nn.Module):
    """One task's experts with its skills merged into their weights (inference only): stacked
    up [k, hidden, d] / down [k, d, hidden] weights and the task's gates, mixed in one batched pass."""

    def __init__(self, up_weight: torch.Tensor, up_bias: torch.Tensor, down_weight: torch.Tensor,
                 down_bias: torch.Tensor, gates: torch.Tensor) -> None:
        super().__init__()
        for name, value in (("up_weight", up_weight), ("up_bias", up_bias), ("down_weight", down_weight),
                            ("down_bias", down_bias), ("gates", gates)):
            self.register_buffer(name, value.detach().clone())

    def __len__(self) -> int:
        return self.up_weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, d] -> sum_k gate_k expert_k(x) [B, d]."""
        count, hidden, d = self.up_weight.shape
        h = F.gelu(torch.addmm(self.up_bias.reshape(-1), x, self.up_weight.reshape(-1, d).T)).view(-1, count, hidden)
        out = torch.einsum("bkh,kdh->bkd", h, self.down_weight) + self.down_bias
        return torch.einsum("bkd,k->bd", out, self.gates.to(out.dtype))


class SparseMoE(nn.Module):
    """Routed experts (top-k per task sentence) and shared experts (once per example)."""

    def __init__(self, d_model: int, hidden: int, tasks: list[str], router: RouterConfig, skills: SkillConfig) -> None:
        super().__init__()
        self.router = TaskSentenceRouter(d_model, router)
        self.mode = router.mode
        self.routed = ExpertBank(router.num_experts, d_model, hidden) if router.top_k else None
        self.shared = ExpertBank(router.shared_experts, d_model, hidden) if router.shared_experts else None
        banks = 1 if skills.share_across_experts else router.num_experts
        self.skills = ExpertSkills(d_model, hidden, tasks, skills, banks, routed=self.routed is not None)
        self.banks = banks
        self.d_model, self.hidden = d_model, hidden
        # Task routing at inference: each requested task set's merged expert weights (see
        # _task_expert_weights), keyed by the routing and the state of every weight they depend on.
        self._merged_by_tasks: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()

    def add_task(self, task: str) -> list[nn.Parameter]:
        return self.skills.add_task(task)

    def train(self, mode: bool = True) -> SparseMoE:
        # Weights change between modes (optimizer steps, DeepSpeed copying updated partitions through
        # `.data`, which no version counter sees): merged weights kept at inference start afresh.
        self._merged_by_tasks.clear()
        return super().train(mode)

    def adapters(self) -> dict[str, SkillAdapter]:
        """Every skill adapter of the layer by a readable name (for allocation heatmaps)."""
        return {f"experts.{part}": adapter for part in ("up", "down")
                if (adapter := getattr(self.skills, part)) is not None}

    # ---- forward ------------------------------------------------------------------------------------
    def forward(self, s: torch.Tensor, all_task_tokens: torch.Tensor, requested: torch.Tensor,
                tasks: list[str], shared_input: torch.Tensor | None) -> tuple[torch.Tensor, Routing, RouterStats]:
        """s [T, B, d]: the requested tasks' sentences (task-major); all_task_tokens [T_all, d]: every
        task's token (task routing decides for all tasks); requested [T]: their rows in it;
        shared_input [B, d]: the examples' task-independent representation (shared experts)."""
        if self.mode == "task":
            routing = self.router.route_tasks(all_task_tokens, requested)
        else:
            routing = self.router.route_sentences(all_task_tokens[requested], s)
        mix_up, mix_down = self.skills.mixes(tasks)  # one draw per task for this pass
        out = s
        low_rank = None  # [T, B, R]: the down-skill inputs still to be projected up (shared bank)
        if self.routed is not None:
            if self.mode == "task":
                out = self._routed_by_task(s, routing, tasks, mix_up, mix_down)
            else:
                out, low_rank = self._routed_by_sentence(s, routing, mix_up, mix_down)
        if self.shared is not None:
            out, shared_low_rank = self._shared(out, shared_input, routing.shared_gates, mix_down)
            if shared_low_rank is not None:
                low_rank = shared_low_rank if low_rank is None else low_rank + shared_low_rank
        if low_rank is not None:
            out = torch.baddbmm(out, low_rank, self.skills.down.task_weights(mix_down)[1])
        return out, routing, self.router.statistics(routing, s.shape[1], tasks)

    def _merged_weights(self, adapter: SkillAdapter | None, mix: SkillMix | None, base: torch.Tensor,
                        flat: torch.Tensor, group_task: torch.Tensor) -> torch.Tensor:
        """Each (task, expert) group's weight [G, out, in]: the expert's base weight plus the task's
        skill delta (its bank's), so the skills cost O(tasks x weights), not O(rows)."""
        weight = base[flat]
        if adapter is None:
            return weight
        bank = flat if self.banks > 1 else torch.zeros_like(flat)
        down, up = adapter.group_weights(mix, group_task, bank)
        return torch.baddbmm(weight, up.transpose(1, 2), down)

    def _routed_by_task(self, s: torch.Tensor, routing: Routing, tasks: list[str], mix_up: SkillMix | None,
                        mix_down: SkillMix | None) -> torch.Tensor:
        """Task routing: s + sum_j g_j expert_j(s) with every task's k experts (skills merged) as one
        batched matmul per layer; group (t, j) holds all rows of task t for its j-th expert."""
        up, down, bias = self._task_expert_weights(routing, tasks, mix_up, mix_down)
        h = F.gelu(torch.bmm(F.pad(s, (0, 1), value=1.0), up))  # [T, B, k * hidden]
        return torch.baddbmm(s + bias, h, down)

    def _task_expert_weights(self, routing: Routing, tasks: list[str], mix_up: SkillMix | None,
                             mix_down: SkillMix | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The requested tasks' merged expert weights. At inference they depend on the weights only,
        so they are kept per (tasks, routing, weights' state) until the mode changes: building them
        copies every routed (task, expert) pair's weights, which was most of an all-tasks forward at
        batch 1 (T=64). The state is each weight's storage and version counter (an in-place update such
        as load_state_dict's moves it); a change through `.data` in eval mode needs `eval()` again."""
        if self.training or torch.is_grad_enabled():
            return self._merge_task_expert_weights(routing, mix_up, mix_down)
        key = (tuple(tasks), routing.expert_index.cpu().numpy().tobytes(), routing.gates.cpu().numpy().tobytes(),
               tuple((p.data_ptr(), p._version) for p in self.parameters()))
        # Forwards may run in several threads at once (MLflow's scoring server runs the pyfunc in a
        # thread pool): another thread may evict an entry between two steps here, which is no error.
        merged = self._merged_by_tasks.get(key)
        if merged is None:
            merged = self._merge_task_expert_weights(routing, mix_up, mix_down)
            self._merged_by_tasks[key] = merged
            while len(self._merged_by_tasks) > MERGED_TASK_SETS:
                with contextlib.suppress(KeyError):
                    self._merged_by_tasks.popitem(last=False)
        else:
            with contextlib.suppress(KeyError):
                self._merged_by_tasks.move_to_end(key)
        return merged

    def _merge_task_expert_weights(self, routing: Routing, mix_up: SkillMix | None,
                                   mix_down: SkillMix | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(up [T, d + 1, k * hidden] with the bias as its last input row, down [T, k * hidden, d] with
        the gates folded in, the gate-weighted down bias [T, 1, d])."""
        bank, hidden, d = self.routed, self.hidden, self.d_model
        num_tasks, top_k = routing.expert_index.shape
        flat = routing.expert_index.reshape(-1)  # [T * k]
        gates = routing.gates.to(bank.up_weight.dtype)  # [T, k]
        group_task = torch.arange(num_tasks, device=flat.device).repeat_interleave(top_k)
        up = self._merged_weights(self.skills.up, mix_up, bank.up_weight, flat, group_task)
        # The bias rides in the matmul as a weight column against a column of ones: adding it to the
        # [T, B, k * hidden] product would cost a pass as large as the gelu.
        up = torch.cat([up, bank.up_bias[flat].unsqueeze(-1)], dim=-1).view(num_tasks, top_k * hidden, d + 1)
        # sum_j g_j (W_j h_j + b_j) as one matmul per task over the concatenated hidden states.
        down = self._merged_weights(self.skills.down, mix_down, bank.down_weight, flat, group_task)
        down = (down.view(num_tasks, top_k, d, hidden) * gates[:, :, None, None]).transpose(1, 2)
        bias = (bank.down_bias[flat].view(num_tasks, top_k, d) * gates.unsqueeze(-1)).sum(1, keepdim=True)
        return up.transpose(1, 2), down.reshape(num_tasks, d, top_k * hidden).transpose(1, 2), bias

    def _routed_by_sentence(self, s: torch.Tensor, routing: Routing, mix_up: SkillMix | None,
                            mix_down: SkillMix | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sentence routing: the assignments that run, in blocks of ROUTING_BLOCK rows of one
        expert each (see expert_blocks). Returns s + the experts' outputs, and the down-skill low-rank
        inputs of the gate-weighted hidden states (one shared skill bank)."""
        num_tasks, size, d = s.shape
        bank, hidden = self.routed, self.hidden
        rows_total = num_tasks * size
        top_k = routing.expert_index.shape[-1]
        kept = routing.kept.reshape(-1).nonzero().squeeze(1)
        expert = routing.expert_index.reshape(-1)[kept]
        rows = kept // top_k
        gates = routing.gates.reshape(-1)[kept].to(s.dtype).unsqueeze(1)
        block, offset, block_expert = expert_blocks(expert, bank.count, ROUTING_BLOCK)
        flat = s.reshape(rows_total, d)
        buffer = flat.new_zeros(block_expert.numel(), ROUTING_BLOCK, d)
        buffer[block, offset] = flat[rows]
        pre = torch.baddbmm(bank.up_bias[block_expert].unsqueeze(1), buffer,
                            bank.up_weight[block_expert].transpose(1, 2))[block, offset]
        if self.skills.up is not None:
            pre = pre + self.skills.up.delta(s, mix_up).reshape(rows_total, hidden)[rows]
        h = F.gelu(pre)  # [assignments, hidden]
        buffer = h.new_zeros(block_expert.numel(), ROUTING_BLOCK, hidden)
        buffer[block, offset] = h
        out = torch.baddbmm(bank.down_bias[block_expert].unsqueeze(1), buffer,
                            bank.down_weight[block_expert].transpose(1, 2))[block, offset]
        combined = flat.index_add(0, rows, out * gates).view(num_tasks, size, d)
        if self.skills.down is None:
            return combined, None
        mixed_hidden = h.new_zeros(rows_total, hidden).index_add(0, rows, h * gates).view(num_tasks, size, hidden)
        down, _ = self.skills.down.task_weights(mix_down)
        return combined, torch.bmm(mixed_hidden, down.transpose(1, 2))

    def _shared(self, out: torch.Tensor, x: torch.Tensor, gates: torch.Tensor,
                mix_down: SkillMix | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Shared experts on x [B, d], once per example, each task mixing them by its gates ([T, m] or
        [T, B, m]). Returns out + the mixed outputs, and the down-skill low-rank inputs of the
        gate-weighted hidden states, projected per expert before mixing so that no [T, B, hidden]
        tensor is built."""
        bank, hidden = self.shared, self.hidden
        num_tasks, size, d = out.shape
        count = bank.count
        h = F.gelu(torch.addmm(bank.up_bias.reshape(-1), x, bank.up_weight.reshape(-1, d).T)).view(size, count, hidden)
        expert_out = torch.einsum("bmh,mdh->mbd", h, bank.down_weight) + bank.down_bias.unsqueeze(1)  # [m, B, d]
        gates = gates.to(x.dtype)
        if gates.dim() == 2:
            mixed = torch.addmm(out.reshape(num_tasks, -1), gates, expert_out.reshape(count, -1)).view_as(out)
        else:
            mixed = out + torch.einsum("tbm,mbd->tbd", gates, expert_out)
        if self.skills.down is None:
            return mixed, None
        down, _ = self.skills.down.task_weights(mix_down)  # [T, R, hidden]
        projected = torch.einsum("bmh,trh->tbmr", h, down)
        if gates.dim() == 2:
            return mixed, torch.einsum("tbmr,tm->tbr", projected, gates)
        return mixed, torch.einsum("tbmr,tbm->tbr", projected, gates)

    # ---- one task's experts, merged (task routing) ------------------------------------------------
    @torch.no_grad()
    def merged_experts(self, task: str, expert_ids: list[int], gates: list[float],
                       shared_gates: list[float]) -> tuple[MergedExperts | None, MergedExperts | None]:
        """(routed, shared) experts of `task` with its skills merged into their weights: the routed
        ones read the task's sentence, the shared ones the example's shared representation (their
        up-projection has no task skill, so it stays shared)."""
        up_skills, down_skills = self.skills.up, self.skills.down

        def delta(adapter: SkillAdapter | None, bank: int, like: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(like) if adapter is None else adapter.delta_weight(task, bank)

        routed = shared = None
        if self.routed is not None and expert_ids:
            ids = torch.tensor(expert_ids, device=self.routed.up_weight.device)
            banks = [0 if self.banks == 1 else e for e in expert_ids]
            up = torch.stack([self.routed.up_weight[e] + delta(up_skills, b, self.routed.up_weight[e])
                              for e, b in zip(expert_ids, banks)])
            down = torch.stack([self.routed.down_weight[e] + delta(down_skills, b, self.routed.down_weight[e])
                                for e, b in zip(expert_ids, banks)])
            routed = MergedExperts(up, self.routed.up_bias[ids], down, self.routed.down_bias[ids],
                                   torch.tensor(gates, device=ids.device))
        if self.shared is not None:
            down_delta = delta(down_skills, 0, self.shared.down_weight[0])
            shared = MergedExperts(self.shared.up_weight, self.shared.up_bias, self.shared.down_weight + down_delta,
                                   self.shared.down_bias, torch.tensor(shared_gates, device=down_delta.device))
        return routed, shared
