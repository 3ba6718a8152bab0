"""Per-task sub-model (`TaskSubModel`): with `task` routing a task's experts are known before any
request, so one task is served by the shared encoders plus only its experts and tower with its C-Poly
skills merged ("1 + N" serving). GRec.export_task takes the task's parts out of the full model."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from grec.batch import Batch, Collator, Columns
from grec.encoder import ExampleEncoder
from grec.heads import TaskHead
from grec.moe import MergedExperts
from grec.quantization import quantize_linear_layers
from grec.sentence import TaskSentenceEncoder
from grec.sparse import SparseArch


class SharedEncoders(NamedTuple):
    """The full model's modules that every task's sub-model references (not copies)."""

    collator: Collator
    sparse_arch: SparseArch
    encoder: ExampleEncoder
    sentence_encoder: TaskSentenceEncoder


class TaskSnapshot(NamedTuple):
    """One task's own inference parts, taken from the full model at export: its head (shared with the
    full model), its sentence queries [1 or 2, d] (the task's, then the shared experts'), the ids of
    its routed experts, and its merged experts and tower (copies, its skills merged in)."""

    head: TaskHead
    queries: torch.Tensor
    expert_ids: list[int]
    routed: MergedExperts | None
    shared: MergedExperts | None
    tower: nn.Linear


class TaskSubModel(nn.Module):
    """Inference module of one task. It references the full model's sparse arch, example encoder,
    sentence encoder and head (shared across the tasks' sub-models; `.eval()` on either model switches
    them for both) and holds its own merged experts and tower, a snapshot: export again after further
    training."""

    def __init__(self, task: str, encoders: SharedEncoders, own: TaskSnapshot, precision: str) -> None:
        super().__init__()
        self.task = task
        self.collator = encoders.collator
        self.sparse_arch = encoders.sparse_arch
        self.encoder = encoders.encoder
        self.sentence_encoder = encoders.sentence_encoder
        self.head = own.head
        self.register_buffer("queries", own.queries)
        self.expert_ids = own.expert_ids
        self.routed, self.shared = own.routed, own.shared
        self.tower = own.tower
        if precision == "int8":  # its merged tower computes as the model's other linear layers do
            quantize_linear_layers(self)

    def collate(self, columns: Columns) -> Batch:
        return self.collator(columns)

    def forward(self, batch: Batch, user_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The task's logits: [B] or [B, C]. `user_tokens` [B, num_user_tokens, d_model]: precomputed
        user sides of the rows (the model's `encode_user_tokens`; None: computed from `batch`)."""
        return self.logits(self.encode_examples(batch, user_tokens))

    def encode_examples(self, batch: Batch, user_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Example tokens [B, n_tokens, d_model] from the shared encoders: the same for every task's
        sub-model, so rows scored for several tasks are encoded once."""
        pooled, per_position = self.sparse_arch(batch.categorical, batch.sequences)
        return self.encoder(pooled, per_position, batch, user_tokens)

    def logits(self, examples: torch.Tensor) -> torch.Tensor:
        """The task's logits [B] or [B, C] from example tokens (`encode_examples`)."""
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
        return self.predict_examples(self.encode_examples(batch, user_tokens))

    @torch.no_grad()
    def predict_examples(self, examples: torch.Tensor) -> torch.Tensor:
        """The head's prediction (probability, value or class probabilities) from example tokens."""
        return self.head.predict(self.logits(examples))

    def own_parameters(self) -> int:
        """Weights this task's sub-model holds beyond the shared encoders: experts, tower, head."""
        own = sum(b.numel() for module in (self.routed, self.shared) if module is not None for b in module.buffers())
        own += sum(p.numel() for module in (self.tower, self.head) for p in module.parameters())
        return own + self.queries.numel()
