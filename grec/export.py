"""Per-task sub-model: with `task` routing a task's experts are known before any request, so one task
is served by the shared encoders plus only its experts and tower with its C-Poly skills merged
("1 + N" serving)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from grec.batch import Batch, Columns

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
            task_token = model.task_tokens([task])[0]
            self.register_buffer("task_token", task_token.detach().clone())
            self.register_buffer("slot_embedding", model.slot_embedding.detach().clone())
            expert_ids, gates = model.moe.router.route_task(task_token)
            self.expert_ids = expert_ids
            self.register_buffer("gates", torch.tensor(gates, dtype=task_token.dtype, device=task_token.device))
            self.experts = nn.ModuleList(model.moe.experts[e].merged(model.moe.skills_of(e), task) for e in expert_ids)
            self.tower = model.tower.merged(task)

    def collate(self, columns: Columns) -> Batch:
        return self.collator(columns)

    def forward(self, batch: Batch) -> torch.Tensor:
        """The task's logits: [B] or [B, C]."""
        pooled, per_position = self.sparse_arch(batch.categorical, batch.sequences)
        examples = self.encoder(pooled, per_position, batch)
        size, _, d = examples.shape
        sentence = torch.cat([self.task_token.expand(size, 1, d), examples], dim=1) + self.slot_embedding
        x = self.sentence_encoder(sentence)[:, 0]
        combined = torch.zeros_like(x)
        for gate, expert in zip(self.gates, self.experts):
            combined = combined + gate * expert(x)
        return self.head.logits(F.gelu(self.tower(x + combined)))

    @torch.no_grad()
    def predict(self, batch: Batch) -> torch.Tensor:
        return self.head.predict(self(batch))

    def own_parameters(self) -> int:
        """Parameters this task's sub-model holds beyond the shared encoders: experts, tower, head."""
        own = [self.experts, self.tower, self.head]
        return sum(p.numel() for module in own for p in module.parameters()) + self.task_token.numel() + self.gates.numel()
