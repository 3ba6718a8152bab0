"""Per-task sub-model: with `task` routing a task's experts are known before any request, so one task
is served by the shared encoders plus only its experts and tower with its C-Poly skills merged
("1 + N" serving)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from grec.batch import Batch, Columns
from grec.quantization import quantize_linear_layers

if TYPE_CHECKING:
    from grec.grec_model import GRec


class TaskSubModel(nn.Module):
    """Inference module of one task. It references the full model's sparse arch, example encoder,
    sentence encoder and head (shared across the tasks' sub-models; `.eval()` on either model switches
    them for both) and holds its own merged experts and tower, a snapshot: export again after further
    training."""

    def __init__(self, model: GRec, task: str) -> None:
        super().__init__()
        config = model.config
        if config.router.mode != "task":
            raise ValueError(f"export_task needs router.mode 'task' (routing known per task), not {config.router.mode!r}")
        config.check_tasks([task])
        self.task = task
        self.collator = model.collator
        self.sparse_arch = model.sparse_arch
        self.encoder = model.encoder
        self.sentence_encoder = model.sentence_encoder
        self.head = model.heads[task]
        with torch.no_grad():
            all_tokens = model.task_tokens(model.task_names)
            index = model.task_names.index(task)
            self.register_buffer("queries", model.queries(all_tokens[index:index + 1]).detach().clone())
            expert_ids, gates, shared_gates = model.moe.router.route_task(all_tokens, index)
            self.expert_ids = expert_ids
            self.routed, self.shared = model.moe.merged_experts(task, expert_ids, gates, shared_gates)
            self.tower = model.tower.merged(task)
        if model.precision == "int8":  # its merged tower computes as the model's other linear layers do
            quantize_linear_layers(self)

    def collate(self, columns: Columns) -> Batch:
        return self.collator(columns)

    def forward(self, batch: Batch, user_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The task's logits: [B] or [B, C]. `user_tokens` [B, num_user_tokens, d_model]: precomputed
        user sides of the rows (the model's `encode_user_tokens`; None: computed from `batch`)."""
        pooled, per_position = self.sparse_arch(batch.categorical, batch.sequences)
        examples = self.encoder(pooled, per_position, batch, user_tokens)
        sentences = self.sentence_encoder(examples, self.queries)  # [1 or 2, B, d]
        x = sentences[0]
        out = x
        if self.routed is not None:
            out = out + self.routed(x)
        if self.shared is not None:
            out = out + self.shared(sentences[1])
        return self.head.logits(F.gelu(self.tower(out)))

    @torch.no_grad()
    def predict(self, batch: Batch, user_tokens: torch.Tensor | None = None) -> torch.Tensor:
        return self.head.predict(self(batch, user_tokens))

    def own_parameters(self) -> int:
        """Weights this task's sub-model holds beyond the shared encoders: experts, tower, head."""
        own = sum(b.numel() for module in (self.routed, self.shared) if module is not None for b in module.buffers())
        own += sum(p.numel() for module in (self.tower, self.head) for p in module.parameters())
        return own + self.queries.numel()
