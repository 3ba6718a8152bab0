"""What GRec and the baselines share: the encoders, collation, heads, losses and prediction."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import nn

from grec.batch import Batch, Collator, Columns
from grec.config import GRecConfig
from grec.encoder import ExampleEncoder
from grec.heads import MulticlassHead, TaskHead, make_head
from grec.router import RouterStats
from grec.sparse import SparseArch, TableInfo
from grec.spec import TaskSpec
from grec.text import TextEncoder, load_tokenizer
from grec.transformer import TransformerStack


class ModelOutput(NamedTuple):
    """logits[task]: [B] (binary, regression) or [B, C] (multiclass); a multiclass task trained with
    sampled softmax has no logits in training mode (only `hidden`). hidden[task]: the head input.
    A NamedTuple (see `grec.router.Routing`)."""

    logits: dict[str, torch.Tensor]
    hidden: dict[str, torch.Tensor]
    aux_losses: dict[str, torch.Tensor]
    router_stats: RouterStats | None = None


class MultiTaskModel(nn.Module, ABC):
    """Encoders shared by every architecture: `sparse_arch` (all embedding tables, takes
    KeyedJaggedTensors), `encoder` (wide&deep, sequences, text, item tokens once per example) and the
    `sentence_encoder` (parallel transformer blocks over the tokens). Subclasses map the example
    tokens to a hidden vector per task."""

    def __init__(self, config: GRecConfig, pretrained_text: bool = True) -> None:
        super().__init__()
        self.config = config
        tokenizer = load_tokenizer(config.text) if config.text is not None else None
        self.collator = Collator(config.input, tokenizer)
        text_encoder = None
        if config.text is not None:
            text_encoder = TextEncoder(config.text, len(tokenizer), pretrained=pretrained_text)
        self.sparse_arch = SparseArch(config.input, config.embedding_dim)
        self._tables = self.sparse_arch.tables()
        self.encoder = ExampleEncoder(config, text_encoder)
        if self.encoder.num_tokens == 0:
            raise ValueError("the input spec yields no tokens (no categorical, numeric, sequence or text features)")
        self.sentence_encoder = TransformerStack(config.sentence_layers, config.d_model, config.num_heads,
                                                 config.ffn_hidden, config.dropout)
        self.heads = nn.ModuleDict()
        self.log_vars = nn.ParameterDict()  # uncertainty weighting: one learned log-variance per task
        for task in config.input.tasks:
            self._add_head(task)

    def _add_head(self, task: TaskSpec) -> list[nn.Parameter]:
        self.heads[task.name] = make_head(task, self.head_input_dim)
        new = list(self.heads[task.name].parameters())
        if self.config.losses.weighting == "uncertainty":
            self.log_vars[task.name] = nn.Parameter(torch.zeros(()))
            new.append(self.log_vars[task.name])
        return new

    @property
    def head_input_dim(self) -> int:
        return self.config.tower_hidden

    @property
    def task_names(self) -> list[str]:
        return self.config.task_names

    # ---- inputs ------------------------------------------------------------------------------------
    def collate(self, columns: Columns) -> Batch:
        """Transformed columns (dict of arrays / lists, or a pyarrow Table) -> a Batch of tensors."""
        return self.collator(columns)

    def embedding_tables(self) -> list[TableInfo]:
        """Every embedding table of `sparse_arch` with its size (to plan sharding)."""
        return list(self._tables)

    def encode_examples(self, batch: Batch) -> torch.Tensor:
        """Example tokens [B, n_tokens, d_model]: the encoders run once per example."""
        pooled, per_position = self.sparse_arch(batch.categorical, batch.sequences)
        return self.encoder(pooled, per_position, batch)

    # ---- the architecture-specific part ---------------------------------------------------------------
    @abstractmethod
    def task_hidden(self, batch: Batch, tasks: list[str]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                                                   RouterStats | None]:
        """(hidden [B, head_input_dim] per task, auxiliary losses, router statistics)."""

    # ---- outputs -----------------------------------------------------------------------------------
    def forward(self, batch: Batch, tasks: list[str] | None = None) -> ModelOutput:
        tasks = self.config.check_tasks(tasks)
        hidden, aux, stats = self.task_hidden(batch, tasks)
        sampled = self.config.losses.sampled_softmax if self.training else {}
        logits = {t: self.heads[t].logits(hidden[t]) for t in tasks if t not in sampled}
        return ModelOutput(logits, hidden, aux, stats)

    def loss(self, out: ModelOutput, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted losses of the tasks in `out` that have labels in `batch`, plus router auxiliary
        losses. parts: 'task/<name>' (unweighted) and 'aux/<name>' (unweighted), detached."""
        losses = self.config.losses
        total = None
        parts: dict[str, torch.Tensor] = {}
        for task, hidden in out.hidden.items():
            if task not in batch.labels:
                continue
            head: TaskHead = self.heads[task]
            labels = batch.labels[task]
            if task in out.logits:
                task_loss = head.loss(out.logits[task], labels)
            else:
                assert isinstance(head, MulticlassHead)
                task_loss = head.sampled_loss(hidden, labels, losses.sampled_softmax[task])
            parts[f"task/{task}"] = task_loss.detach()
            if losses.weighting == "uncertainty":
                log_var = self.log_vars[task]
                weighted = torch.exp(-log_var) * task_loss + log_var
            else:
                weighted = losses.task_weights.get(task, 1.0) * task_loss
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError(f"the batch has no labels for tasks {list(out.hidden)}; labels: {list(batch.labels)}")
        weights = {"load_balance": self.config.router.load_balance_weight, "router_z": self.config.router.z_loss_weight}
        for name, value in out.aux_losses.items():
            parts[f"aux/{name}"] = value.detach()
            total = total + weights[name] * value
        return total, parts

    def predict(self, batch: Batch, tasks: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Probabilities (binary), values (regression), class probabilities (multiclass), in eval mode."""
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                out = self(batch, tasks)
        finally:
            if was_training:
                self.train(True)
        return {t: self.heads[t].predict(logits) for t, logits in out.logits.items()}

    # ---- task management (GRec only) ------------------------------------------------------------------
    def export_task(self, task: str) -> nn.Module:
        raise ValueError(f"export_task needs architecture 'grec' with router.mode 'task', "
                         f"not {self.config.architecture!r}")

    def add_task(self, task: TaskSpec) -> list[nn.Parameter]:
        raise ValueError(f"add_task needs architecture 'grec', not {self.config.architecture!r}")
