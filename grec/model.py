"""The base of GRec and the baselines (`MultiTaskModel`): the shared encoders and the forward pass
from a batch to every requested task's logits. It delegates collation (grec/batch.py,
grec/collation.py), the task heads (grec/tasks.py), the loss (grec/losses.py) and task sampling
(grec/task_sampling.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import pyarrow as pa
import torch
from torch import nn

from grec.batch import Batch, Collator, Columns
from grec.collation import LabelledCollator
from grec.config import GRecConfig
from grec.encoder import ExampleEncoder
from grec.losses import multitask_loss
from grec.output import ModelOutput
from grec.router import RouterStats
from grec.sparse import SparseArch, TableInfo
from grec.spec import TaskSpec
from grec.task_sampling import training_tasks
from grec.tasks import TaskLayout, add_task_head, task_layout, task_logits
from grec.text import TextEncoder, load_tokenizer


class MultiTaskModel(nn.Module, ABC):
    """Encoders shared by every architecture: `sparse_arch` (all embedding tables, takes
    KeyedJaggedTensors) and `encoder` (wide&deep, sequences, text, item tokens once per example).
    Subclasses map the example tokens to a hidden vector per task ([T, B, H], task-major); the heads
    and losses of every architecture run grouped by kind (grec/tasks.py, grec/losses.py)."""

    def __init__(self, config: GRecConfig, pretrained_text: bool = True) -> None:
        super().__init__()
        self.config = config
        tokenizer = load_tokenizer(config.text) if config.text is not None else None
        self.collator = Collator(config.input, tokenizer)
        self.labelled_collator = LabelledCollator(self.collator, config.losses.implicit_negatives, config.seed)
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
        new = add_task_head(self.heads, self.log_vars, task, self.head_input_dim, self.config.losses.weighting)
        self._layouts = {}
        return new

    @property
    def head_input_dim(self) -> int:
        return self.config.tower_hidden

    @property
    def task_names(self) -> list[str]:
        return self.config.task_names

    def layout(self, tasks: list[str], device: torch.device) -> TaskLayout:
        """Where `tasks` sit among the model's tasks (cached per task list and device)."""
        key = (tuple(tasks), device)
        layout = self._layouts.get(key)
        if layout is None:
            layout = self._layouts[key] = task_layout(self.task_names, self.heads, tasks, device)
        return layout

    # ---- inputs ------------------------------------------------------------------------------------
    def collate(self, columns: Columns) -> Batch:
        """Transformed columns (dict of arrays / lists, or a pyarrow Table) -> a Batch of tensors."""
        return self.collator(columns)

    def collate_labelled(self, table: pa.Table) -> Batch:
        """Labelled rows (training, validation) -> a Batch, with sampled negatives added for the
        implicit-feedback tasks (grec/negatives.py; `losses.implicit_negatives` per row)."""
        return self.labelled_collator(table)

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
        sampled = self.config.losses.sampled_softmax if self.training else {}
        logits = task_logits(self.heads, tasks, self.layout(tasks, hidden.device), hidden, sampled)
        return ModelOutput(logits, dict(zip(tasks, hidden.unbind(0))), aux, stats)

    def loss(self, out: ModelOutput, batch: Batch, task_scale: float = 1.0) -> tuple[torch.Tensor,
                                                                                      dict[str, torch.Tensor]]:
        """Weighted losses of the tasks in `out` that have labels in `batch` (times `task_scale`, see
        `training_tasks`), plus router auxiliary losses: `grec.losses.multitask_loss`."""
        return multitask_loss(out, batch.labels, self.heads, self.log_vars, self.config, task_scale)

    def training_tasks(self, step: int) -> tuple[list[str], float]:
        """The tasks to train on at `step` and the loss scale that keeps the loss unbiased
        (`losses.tasks_per_step`; see grec.task_sampling)."""
        return training_tasks(self.task_names, self.config.losses.tasks_per_step, self.config.seed, step)

    def predict(self, batch: Batch, tasks: list[str] | None = None,
                user_tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Probabilities (binary), values (regression), class probabilities (multiclass), in eval mode."""
        was_training = self.training
        if was_training:  # train() walks every submodule: a model already in eval mode skips it
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

    def add_task(self, task: TaskSpec, like: str | None = None) -> list[nn.Parameter]:
        raise ValueError(f"add_task needs architecture 'grec', not {self.config.architecture!r}")
