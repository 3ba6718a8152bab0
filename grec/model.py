"""What GRec and the baselines share: the encoders, collation, heads, losses and prediction."""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from typing import NamedTuple

import pyarrow as pa
import torch
from torch import nn

from grec.batch import Batch, Collator, Columns
from grec.config import GRecConfig
from grec.encoder import ExampleEncoder
from grec.heads import (BinaryHead, MulticlassHead, RegressionHead, ScalarHead, binary_losses, make_head,
                        regression_losses, scalar_logits)
from grec.negatives import add_sampled_negatives
from grec.router import RouterStats
from grec.sparse import SparseArch, TableInfo
from grec.spec import TaskSpec
from grec.text import TextEncoder, load_tokenizer


class ModelOutput(NamedTuple):
    """logits[task]: [B] (binary, regression) or [B, C] (multiclass); a multiclass task trained with
    sampled softmax has no logits in training mode (only `hidden`). hidden[task]: the head input.
    A NamedTuple (see `grec.router.Routing`)."""

    logits: dict[str, torch.Tensor]
    hidden: dict[str, torch.Tensor]
    aux_losses: dict[str, torch.Tensor]
    router_stats: RouterStats | None = None


class TaskLayout(NamedTuple):
    """Where the requested tasks sit, computed once per task list: their rows among the model's tasks,
    and which of them have scalar heads (scored grouped) or multiclass heads."""

    requested: torch.Tensor  # [T] rows in model.task_names
    scalar: list[int]  # positions in the requested list
    scalar_index: torch.Tensor
    multiclass: list[int]


class MultiTaskModel(nn.Module, ABC):
    """Encoders shared by every architecture: `sparse_arch` (all embedding tables, takes
    KeyedJaggedTensors) and `encoder` (wide&deep, sequences, text, item tokens once per example).
    Subclasses map the example tokens to a hidden vector per task ([T, B, H], task-major); the heads
    and losses of every architecture run grouped by kind here."""

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
        self.heads = nn.ModuleDict()
        self.log_vars = nn.ParameterDict()  # uncertainty weighting: one learned log-variance per task
        for task in config.input.tasks:
            self._add_head(task)
        self._layouts: dict[tuple[tuple[str, ...], torch.device], TaskLayout] = {}
        # What the weights are stored as and how they compute (grec.quantization; set when loaded).
        self.precision = "fp32"

    def _add_head(self, task: TaskSpec) -> list[nn.Parameter]:
        self.heads[task.name] = make_head(task, self.head_input_dim)
        new = list(self.heads[task.name].parameters())
        if self.config.losses.weighting == "uncertainty":
            self.log_vars[task.name] = nn.Parameter(torch.zeros(()))
            new.append(self.log_vars[task.name])
        self._layouts = {}
        return new

    @property
    def head_input_dim(self) -> int:
        return self.config.tower_hidden

    @property
    def task_names(self) -> list[str]:
        return self.config.task_names

    def layout(self, tasks: list[str], device: torch.device) -> TaskLayout:
        key = (tuple(tasks), device)
        layout = self._layouts.get(key)
        if layout is None:
            names = self.task_names
            scalar = [i for i, t in enumerate(tasks) if isinstance(self.heads[t], ScalarHead)]
            layout = TaskLayout(torch.tensor([names.index(t) for t in tasks], device=device), scalar,
                                torch.tensor(scalar, dtype=torch.long, device=device),
                                [i for i in range(len(tasks)) if i not in set(scalar)])
            self._layouts[key] = layout
        return layout

    # ---- inputs ------------------------------------------------------------------------------------
    def collate(self, columns: Columns) -> Batch:
        """Transformed columns (dict of arrays / lists, or a pyarrow Table) -> a Batch of tensors."""
        return self.collator(columns)

    def collate_labelled(self, table: pa.Table) -> Batch:
        """Labelled rows (training, validation) -> a Batch, with sampled negatives added for the
        implicit-feedback tasks (grec/negatives.py; `losses.implicit_negatives` per row)."""
        return self.collator(add_sampled_negatives(table, self.config.input, self.config.losses.implicit_negatives,
                                                   self.config.seed))

    def embedding_tables(self) -> list[TableInfo]:
        """Every embedding table of `sparse_arch` with its size (to plan sharding)."""
        return list(self._tables)

    def encode_examples(self, batch: Batch, user_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Example tokens [B, n_tokens, d_model]: the encoders run once per example; with
        `user_tokens` (see `encode_user_tokens`) only the item side runs."""
        pooled, per_position = self.sparse_arch(batch.categorical, batch.sequences)
        return self.encoder(pooled, per_position, batch, user_tokens)

    @property
    def num_user_tokens(self) -> int:
        return self.encoder.num_user_tokens

    def encode_user_tokens(self, batch: Batch) -> torch.Tensor:
        """The task- and candidate-independent tokens [B, num_user_tokens, d_model] (wide&deep over
        user and context features, behavior sequences, context text): what a batch job can compute
        once per user and `forward(..., user_tokens=...)` takes back. They do not depend on the
        batch's item columns (a row without a candidate, its item columns null, gives them)."""
        pooled, per_position = self.sparse_arch(batch.categorical, batch.sequences)
        return self.encoder.user_tokens(pooled, per_position, batch)

    # ---- the architecture-specific part ---------------------------------------------------------------
    @abstractmethod
    def task_hidden(self, examples: torch.Tensor, tasks: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                                             RouterStats | None]:
        """examples [B, n_tokens, d_model] -> (hidden [T, B, head_input_dim] in the order of `tasks`,
        auxiliary losses, router statistics)."""

    # ---- outputs -----------------------------------------------------------------------------------
    def forward(self, batch: Batch, tasks: list[str] | None = None,
                user_tokens: torch.Tensor | None = None) -> ModelOutput:
        """`user_tokens` [B, num_user_tokens, d_model]: precomputed user sides of the rows (e.g. one
        stored user's tokens expanded over its candidates); None computes them from `batch`."""
        tasks = self.config.check_tasks(tasks)
        hidden, aux, stats = self.task_hidden(self.encode_examples(batch, user_tokens), tasks)
        layout = self.layout(tasks, hidden.device)
        per_task = hidden.unbind(0)
        logits: dict[str, torch.Tensor] = {}
        if layout.scalar:
            grouped = hidden if len(layout.scalar) == len(tasks) else hidden.index_select(0, layout.scalar_index)
            scores = scalar_logits([self.heads[tasks[i]] for i in layout.scalar], grouped).unbind(0)
            logits.update((tasks[i], score) for i, score in zip(layout.scalar, scores))
        sampled = self.config.losses.sampled_softmax if self.training else {}
        for i in layout.multiclass:
            if tasks[i] not in sampled:
                logits[tasks[i]] = self.heads[tasks[i]].logits(per_task[i])
        ordered = {t: logits[t] for t in tasks if t in logits}
        return ModelOutput(ordered, dict(zip(tasks, per_task)), aux, stats)

    def loss(self, out: ModelOutput, batch: Batch, task_scale: float = 1.0) -> tuple[torch.Tensor,
                                                                                      dict[str, torch.Tensor]]:
        """Weighted losses of the tasks in `out` that have labels in `batch` (times `task_scale`, see
        `training_tasks`), plus router auxiliary losses. parts: 'task/<name>' (unweighted) and
        'aux/<name>' (unweighted), detached."""
        config = self.config.losses
        labelled = [t for t in out.hidden if t in batch.labels]
        if not labelled:
            raise ValueError(f"the batch has no labels for tasks {list(out.hidden)}; labels: {list(batch.labels)}")
        names: list[str] = []
        losses: list[torch.Tensor] = []
        for kind, grouped_loss in ((BinaryHead, binary_losses), (RegressionHead, regression_losses)):
            group = [t for t in labelled if isinstance(self.heads[t], kind)]
            if group:
                names += group
                losses.append(grouped_loss(torch.stack([out.logits[t] for t in group]),
                                           torch.stack([batch.labels[t] for t in group])))
        for task in labelled:
            head = self.heads[task]
            if not isinstance(head, MulticlassHead):
                continue
            names.append(task)
            if task in out.logits:
                losses.append(head.loss(out.logits[task], batch.labels[task]).unsqueeze(0))
            else:
                losses.append(head.sampled_loss(out.hidden[task], batch.labels[task],
                                                config.sampled_softmax[task]).unsqueeze(0))
        per_task = torch.cat(losses)
        if config.weighting == "uncertainty":
            log_var = torch.stack([self.log_vars[t] for t in names])
            weighted = torch.exp(-log_var) * per_task + log_var
        else:
            weights = [config.task_weights.get(t, 1.0) for t in names]
            weighted = per_task * torch.tensor(weights, dtype=per_task.dtype, device=per_task.device)
        total = task_scale * weighted.sum()
        parts = dict(zip((f"task/{t}" for t in names), per_task.detach().unbind(0)))
        aux_weights = {"load_balance": self.config.router.load_balance_weight,
                       "router_z": self.config.router.z_loss_weight}
        for name, value in out.aux_losses.items():
            parts[f"aux/{name}"] = value.detach()
            total = total + aux_weights[name] * value
        return total, parts

    def training_tasks(self, step: int) -> tuple[list[str], float]:
        """The tasks to train on at `step` and the loss scale that keeps the loss unbiased: all tasks
        and 1, or (`losses.tasks_per_step` K) K tasks drawn uniformly without replacement and T / K.
        The draw depends on (seed, step) only, so every data-parallel rank trains the same tasks (and
        reduces the same gradients)."""
        per_step = self.config.losses.tasks_per_step
        names = self.task_names
        if per_step is None or per_step >= len(names):
            return names, 1.0
        drawn = set(random.Random(f"{self.config.seed}:{step}").sample(range(len(names)), per_step))
        return [t for i, t in enumerate(names) if i in drawn], len(names) / per_step

    def predict(self, batch: Batch, tasks: list[str] | None = None,
                user_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Probabilities (binary), values (regression), class probabilities (multiclass), in eval mode."""
        was_training = self.training
        self.train(False)
        try:
            with torch.no_grad():
                out = self(batch, tasks, user_tokens)
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
