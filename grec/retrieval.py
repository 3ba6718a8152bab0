"""Retrieval embeddings from a trained model: a user/item two-tower head over the model's own tokens.

The first stage of a recommendation picks a few hundred candidates out of the whole catalogue; the
model then ranks them. Scoring every item with the full model per request is too slow, so retrieval
needs one vector per user and one per item whose inner product says "this user will interact with
this item", searchable with an approximate nearest-neighbour index.

The towers read what the model already computes (`model.encode_examples`, in eval mode, frozen):
- user tower: the example tokens that do not depend on the candidate (wide&deep over user and
  context features, one token per behavior sequence, context text), plus the mean of a trainable
  item-id embedding over the user's item history;
- item tower: the model's item token (item features, numerics, text), plus the same trainable
  item-id embedding, initialized from the model's item table (the one its behavior sequences use).
Both end L2-normalized. Training uses in-batch negatives with a softmax over the batch, corrected
by each item's log sampling probability (logQ, Yi et al. 2019: popular items are in-batch negatives
more often), and never counts a repeat of the positive item as a negative.

Pure PyTorch: the index, the batch job that builds it and the endpoint that queries it live in
jobs/ and serving/.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from grec.batch import Batch
from grec.model import MultiTaskModel
from grec.sparse import sequence_table_name

ITEM_TOKEN = "item"
WEIGHTS_FILE = "two_tower.safetensors"
CONFIG_FILE = "two_tower.json"


class TwoTowerConfig(BaseModel):
    """The towers' shape and the training of the retrieval head."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dim: int = Field(128, ge=2, description="size of the user and item vectors")
    hidden: int = Field(256, ge=1, description="hidden width of each tower's MLP")
    temperature: float = Field(0.05, gt=0, description="softmax temperature over cosine similarities")
    history: bool = Field(True, description="add the mean item-id embedding of the user's history to the user tower")
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(1024, ge=2, description="positives per step; the other positives are the negatives")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    seed: int = 0


class RetrievalInputs(NamedTuple):
    """What the towers read for a block of rows, all from the frozen model."""

    user_tokens: torch.Tensor  # [B, U * d_model]: the candidate-independent example tokens
    item_tokens: torch.Tensor  # [B, d_model]: the item token
    items: torch.Tensor  # [B] item ids (the vocabulary's)
    history: torch.Tensor | None  # [B, L] item ids of the user's history (0 = padding); None without one


def item_history_feature(model: MultiTaskModel) -> str | None:
    """The behavior sequence of item ids (the first one whose vocabulary is the item id's), if any."""
    item_key = model.config.input.item_id
    return next((s.name for s in model.config.input.sequences if s.vocab_feature == item_key), None)


def example_inputs(model: MultiTaskModel, batch: Batch) -> RetrievalInputs:
    """The towers' inputs for `batch` (the model in eval mode; nothing here is trained)."""
    names = model.encoder.token_names
    if ITEM_TOKEN not in names:
        raise ValueError("the model has no item token (no item features): retrieval needs one")
    item_key = model.config.input.item_id
    with torch.no_grad():
        tokens = model.encode_examples(batch)
    user_positions = [i for i, name in enumerate(names) if name != ITEM_TOKEN]
    if not user_positions:
        raise ValueError("the model has no user-side token (no user, context, sequence or text features)")
    history_feature = item_history_feature(model)
    history = None
    if history_feature is not None:
        history = batch.sequences[history_feature].values().view(batch.size, -1)
    return RetrievalInputs(tokens[:, user_positions].flatten(1), tokens[:, names.index(ITEM_TOKEN)],
                           batch.categorical[item_key].values(), history)


def model_item_table(model: MultiTaskModel) -> torch.Tensor:
    """The model's item-id embedding table: the behavior sequences' (what 'similar' means to the
    model), else the item id's pooled table."""
    sparse = model.sparse_arch
    item_key = model.config.input.item_id
    if sparse.ec is not None and sequence_table_name(item_key) in sparse.ec.embeddings:
        return sparse.ec.embeddings[sequence_table_name(item_key)].weight.detach().clone()
    if sparse.ebc is not None and f"t_{item_key}" in sparse.ebc.embedding_bags:
        return sparse.ebc.embedding_bags[f"t_{item_key}"].weight.detach().clone()
    raise ValueError(f"the model has no embedding table for its item id {item_key!r}")


def _mlp(inputs: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.GELU(), nn.Linear(hidden, out))


class TwoTower(nn.Module):
    """User and item towers (see the module's docstring); `shape` is what `load_two_tower` needs."""

    def __init__(self, config: TwoTowerConfig, user_inputs: int, item_inputs: int, item_table: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        num_items, embedding_dim = item_table.shape
        self.shape = {"user_inputs": user_inputs, "item_inputs": item_inputs, "num_items": int(num_items),
                      "embedding_dim": int(embedding_dim)}
        self.item_ids = nn.Embedding(num_items, embedding_dim, padding_idx=0)
        with torch.no_grad():
            self.item_ids.weight.copy_(item_table)
            self.item_ids.weight[0].zero_()
        self.user_tower = _mlp(user_inputs + (embedding_dim if config.history else 0), config.hidden, config.dim)
        self.item_tower = _mlp(item_inputs + embedding_dim, config.hidden, config.dim)

    def user_embedding(self, user_tokens: torch.Tensor, history: torch.Tensor | None) -> torch.Tensor:
        """[B, dim], unit length."""
        parts = [user_tokens]
        if self.config.history:
            if history is None:
                raise ValueError("this two-tower reads the item history, and none was given")
            known = (history != 0).unsqueeze(-1).to(user_tokens.dtype)
            summed = (self.item_ids(history) * known).sum(1)
            parts.append(summed / known.sum(1).clamp(min=1.0))
        return F.normalize(self.user_tower(torch.cat(parts, dim=-1)), dim=-1)

    def item_embedding(self, item_tokens: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """[B, dim], unit length."""
        return F.normalize(self.item_tower(torch.cat([item_tokens, self.item_ids(items)], dim=-1)), dim=-1)

    def in_batch_loss(self, users: torch.Tensor, items: torch.Tensor, item_ids: torch.Tensor,
                      log_q: torch.Tensor) -> torch.Tensor:
        """Softmax over the batch's items for each user, logQ-corrected; a repeat of a row's own
        item elsewhere in the batch is not a negative for it."""
        logits = users @ items.T / self.config.temperature - log_q[item_ids].unsqueeze(0)
        repeats = item_ids.unsqueeze(0) == item_ids.unsqueeze(1)
        repeats.fill_diagonal_(False)
        logits = logits.masked_fill(repeats, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(users), device=users.device))


def train_two_tower(positives: RetrievalInputs, catalog_tokens: torch.Tensor, item_table: torch.Tensor,
                    config: TwoTowerConfig) -> tuple[TwoTower, list[float]]:
    """Trains the towers on positive (user, item) rows. `catalog_tokens` [num_items, d_model]: the
    item token of every item id (row = id; what the item tower reads for any item, in training and
    at indexing time). Returns the towers in eval mode and the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    tower = TwoTower(config, positives.user_tokens.shape[1], catalog_tokens.shape[1], item_table)
    counts = torch.bincount(positives.items, minlength=item_table.shape[0]).double()
    log_q = torch.log((counts / counts.sum()).clamp(min=1e-12)).float()
    optimizer = torch.optim.AdamW(tower.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rows = len(positives.items)
    losses = []
    tower.train()
    for _ in range(config.epochs):
        order = torch.randperm(rows, generator=generator)
        total, steps = 0.0, 0
        for start in range(0, rows - 1, config.batch_size):
            index = order[start:start + config.batch_size]
            if len(index) < 2:
                continue
            items = positives.items[index]
            history = None if positives.history is None else positives.history[index]
            loss = tower.in_batch_loss(tower.user_embedding(positives.user_tokens[index], history),
                                       tower.item_embedding(catalog_tokens[items], items), items, log_q)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / max(steps, 1))
    return tower.eval(), losses


def item_embeddings(tower: TwoTower, catalog_tokens: torch.Tensor, items: torch.Tensor,
                    batch_size: int = 4096) -> np.ndarray:
    """[len(items), dim] float32 vectors of the given item ids."""
    with torch.no_grad():
        parts = [tower.item_embedding(catalog_tokens[items[s:s + batch_size]], items[s:s + batch_size])
                 for s in range(0, len(items), batch_size)]
    return torch.cat(parts).numpy().astype(np.float32)


def save_two_tower(tower: TwoTower, directory: str | Path) -> Path:
    """safetensors weights + JSON config (no pickle) in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tower.state_dict().items()}, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps({"config": tower.config.model_dump(), **tower.shape}, indent=2))
    return directory


def load_two_tower(directory: str | Path) -> TwoTower:
    directory = Path(directory)
    meta = json.loads((directory / CONFIG_FILE).read_text())
    table = torch.zeros(meta["num_items"], meta["embedding_dim"])
    tower = TwoTower(TwoTowerConfig.model_validate(meta["config"]), meta["user_inputs"], meta["item_inputs"], table)
    tower.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return tower.eval()
