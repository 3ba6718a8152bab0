"""The next-item model: a user's ordered history through grec's parallel transformer blocks, causal,
every position predicting the item that came next (SASRec's objective, Kang & McAuley 2018).

Items are rows 1..N of a catalogue (0 pads). An item's vector is its own embedding plus, when given,
a projection of fixed item features (the ranker's item token: the item's categorical features,
numerics and cached text), and the same vectors score the output (weights tied to the input, so an
item never seen as a target still scores through its features). Time enters twice: each history
position adds an embedding of the time since the event before it, and the prediction adds one of the
time from the last event to the moment asked about (in training, the next event's time).

Loss: softmax over the whole catalogue while it has at most `full_softmax_items` items; beyond that,
a sampled softmax with negatives drawn by interaction frequency and the logQ correction.

Pure PyTorch: the job that trains it and the index that serves it live in jobs/ and recommend/.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from grec.transformer import TransformerStack

WEIGHTS_FILE = "next_item.safetensors"
CONFIG_FILE = "next_item.json"
# Time gaps (seconds) fall into log2 buckets: 0 (same instant), then one per doubling from 1 s.
GAP_BUCKETS = 32


class NextItemConfig(BaseModel):
    """Shape and training of the next-item model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    d_model: int = Field(64, ge=8, description="width of item vectors and of the transformer")
    num_layers: int = Field(2, ge=1, description="parallel transformer blocks (causal)")
    num_heads: int = Field(2, ge=1)
    ffn_hidden: int = Field(128, ge=1)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    max_length: int = Field(50, ge=2, description="history positions read (the latest ones)")
    time_gaps: bool = Field(True, description="embed the time between events and until the moment asked about")
    max_epochs: int = Field(200, ge=1, description="upper bound; the job stops at the best validation epoch")
    batch_size: int = Field(64, ge=1, description="history windows per step")
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    full_softmax_items: int = Field(50_000, ge=2, description="catalogues up to this size train with a full "
                                    "softmax; larger ones with a sampled softmax")
    negatives: int = Field(2048, ge=1, description="sampled-softmax negatives per step (large catalogues)")
    seed: int = 0

    def with_updates(self, **changes: object) -> NextItemConfig:
        return NextItemConfig.model_validate({**self.model_dump(), **changes})


class Histories(NamedTuple):
    """Left-padded windows of item rows and the times of their events."""

    items: torch.Tensor  # [B, L] long, 0 = padding
    times: torch.Tensor  # [B, L] float64 seconds (0 where padded)


def gap_buckets(seconds: torch.Tensor) -> torch.Tensor:
    """log2 buckets of non-negative gaps in seconds: 0 for 0 s, else 1 + floor(log2(s + 1))."""
    clipped = seconds.clamp(min=0.0)
    bucket = torch.floor(torch.log2(clipped + 1.0)).long() + 1
    return torch.where(clipped > 0, bucket, torch.zeros_like(bucket)).clamp(max=GAP_BUCKETS - 1)


class NextItemModel(nn.Module):
    """See the module's docstring. `item_features` [N + 1, F] (row 0 for padding) or None."""

    def __init__(self, config: NextItemConfig, num_items: int, item_features: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.num_items = num_items
        d = config.d_model
        self.item_embedding = nn.Embedding(num_items + 1, d, padding_idx=0)
        nn.init.normal_(self.item_embedding.weight, std=d ** -0.5)
        with torch.no_grad():
            self.item_embedding.weight[0].zero_()
        self.feature_width = 0 if item_features is None else int(item_features.shape[1])
        if item_features is not None:
            if item_features.shape[0] != num_items + 1:
                raise ValueError(f"item_features has {item_features.shape[0]} rows; expected {num_items + 1} "
                                 "(row 0 for padding, then one per catalogue item)")
            self.register_buffer("item_features", item_features.float().clone())
            self.feature_projection = nn.Linear(self.feature_width, d)
        else:
            self.item_features = None
            self.feature_projection = None
        self.input_gap = nn.Embedding(GAP_BUCKETS, d) if config.time_gaps else None
        self.query_gap = nn.Embedding(GAP_BUCKETS, d) if config.time_gaps else None
        self.dropout = nn.Dropout(config.dropout)
        self.stack = TransformerStack(config.num_layers, d, config.num_heads, config.ffn_hidden, config.dropout)

    def item_vectors(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of item rows [..., d] (every row, padding included, when `rows` is None)."""
        if rows is None:
            vectors = self.item_embedding.weight
            if self.feature_projection is not None:
                vectors = vectors + self.feature_projection(self.item_features)
            return vectors
        vectors = self.item_embedding(rows)
        if self.feature_projection is not None:
            vectors = vectors + self.feature_projection(self.item_features[rows])
        return vectors

    def hidden(self, histories: Histories, query_times: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L, d]: after each position, the vector that scores the next item. `query_times` [B, L]:
        the moment each position's prediction is for (training: the next event's time); None scores
        as if no time passed."""
        items, times = histories
        mask = items != 0
        x = self.item_vectors(items)
        if self.input_gap is not None:
            previous = torch.cat([times[:, :1], times[:, :-1]], dim=1)
            x = x + self.input_gap(gap_buckets(times - previous)) * mask.unsqueeze(-1)
        h = self.stack(self.dropout(x), mask, causal=True)
        if self.query_gap is not None:
            waited = torch.zeros_like(times) if query_times is None else query_times - times
            h = h + self.query_gap(gap_buckets(waited))
        return h

    def user_vectors(self, histories: Histories, now: torch.Tensor | None = None) -> torch.Tensor:
        """[B, d]: the vector after each history's last position; `now` [B] seconds: the moment asked
        about (None: right after the last event)."""
        query = None if now is None else now.unsqueeze(1).expand_as(histories.times)
        return self.hidden(histories, query)[:, -1]

    def scores(self, user_vectors: torch.Tensor) -> torch.Tensor:
        """[B, N]: logits of every catalogue item (rows 1..N; column j is row j + 1)."""
        return user_vectors @ self.item_vectors()[1:].T

    def loss(self, windows: Histories, targets: torch.Tensor, target_times: torch.Tensor,
             log_q: torch.Tensor | None) -> torch.Tensor:
        """Mean cross-entropy of each position's next item. `targets` [B, L] rows (0: no target);
        `log_q` [N + 1]: log sampling probability of every row (sampled softmax) or None (full)."""
        h = self.hidden(windows, target_times)
        valid = targets != 0
        h, targets = h[valid], targets[valid]
        if log_q is None:
            return F.cross_entropy(self.scores(h), targets - 1)
        negatives = torch.multinomial(log_q[1:].exp(), self.config.negatives, replacement=True) + 1
        true = (h * self.item_vectors(targets)).sum(-1, keepdim=True) - log_q[targets].unsqueeze(1)
        sampled = h @ self.item_vectors(negatives).T - log_q[negatives].unsqueeze(0)
        sampled = sampled.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1), float("-inf"))
        return F.cross_entropy(torch.cat([true, sampled], dim=1), torch.zeros_like(targets))


class TrainingWindows:
    """The training windows of `length` positions cut from the end of each sequence (item rows,
    oldest first) with stride `length`, targets the inputs shifted by one. Only where each window
    lies is held (12 bytes a window); a batch's tensors are cut from the sequences when asked for, so
    memory does not grow with the windows' positions."""

    def __init__(self, sequences: Sequence[np.ndarray], times: Sequence[np.ndarray], length: int) -> None:
        self.sequences, self.times, self.length = sequences, times, length
        counts = np.array([max(0, -(-(len(items) - 1) // length)) for items in sequences], dtype=np.int64)
        if not counts.sum():
            raise ValueError("no sequence has two events: the next-item model needs histories to learn from")
        self.sequence = np.repeat(np.arange(len(sequences), dtype=np.int32), counts)
        lengths = np.array([len(items) for items in sequences], dtype=np.int64)[self.sequence]
        # The k-th window of a sequence (from its end) ends at len - k * length.
        first = np.r_[0, np.cumsum(counts)[:-1]]
        rank = np.arange(len(self.sequence)) - np.repeat(first, counts)
        self.end = (lengths - rank * length).astype(np.int32)

    def __len__(self) -> int:
        return len(self.sequence)

    def batch(self, index: np.ndarray | torch.Tensor | None = None) -> tuple[Histories, torch.Tensor, torch.Tensor]:
        """(inputs, targets [B, L], target times [B, L]) of windows `index` (None: all)."""
        index = np.arange(len(self)) if index is None else np.asarray(index, dtype=np.int64)
        length = self.length
        full = np.zeros((len(index), length + 1), dtype=np.int64)
        full_times = np.empty((len(index), length + 1), dtype=np.float64)
        for row, (sequence, end) in enumerate(zip(self.sequence[index].tolist(), self.end[index].tolist(),
                                                  strict=True)):
            items, stamps = self.sequences[sequence], self.times[sequence]
            start = max(0, end - length - 1)
            pad = length + 1 - (end - start)
            full[row, pad:] = items[start:end]
            full_times[row, :pad] = stamps[start]
            full_times[row, pad:] = stamps[start:end]
        inputs = torch.from_numpy(np.ascontiguousarray(full[:, :-1]))
        input_times = torch.from_numpy(np.ascontiguousarray(full_times[:, :-1]))
        return (Histories(inputs, input_times * (inputs != 0)), torch.from_numpy(np.ascontiguousarray(full[:, 1:])),
                torch.from_numpy(np.ascontiguousarray(full_times[:, 1:])))


def history_windows(sequences: Sequence[np.ndarray], times: Sequence[np.ndarray], length: int,
                    ) -> tuple[Histories, torch.Tensor, torch.Tensor]:
    """Every training window at once (TrainingWindows): (inputs, targets [W, L], target times [W, L])."""
    return TrainingWindows(sequences, times, length).batch()


def last_window(items: np.ndarray, times: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The latest `length` positions of one history, left-padded (what a request reads)."""
    items, times = items[-length:], times[-length:]
    pad = length - len(items)
    return (np.concatenate([np.zeros(pad, dtype=np.int64), items.astype(np.int64)]),
            np.concatenate([np.zeros(pad, dtype=np.float64), times.astype(np.float64)]))


def stack_histories(histories: Sequence[tuple[np.ndarray, np.ndarray]], length: int) -> Histories:
    windows = [last_window(items, times, length) for items, times in histories]
    return Histories(torch.from_numpy(np.stack([w[0] for w in windows])),
                     torch.from_numpy(np.stack([w[1] for w in windows])))


def train_next_item(sequences: Sequence[np.ndarray], times: Sequence[np.ndarray], num_items: int,
                    config: NextItemConfig, item_features: torch.Tensor | None = None, *, epochs: int | None = None,
                    on_epoch: Callable[[int, NextItemModel], bool] | None = None) -> tuple[NextItemModel, list[float]]:
    """Trains on every user's ordered history (item rows 1..N, event times in seconds). Runs `epochs`
    (default config.max_epochs) epochs; `on_epoch(epoch, model)` after each (the model in eval mode)
    may return True to stop. Returns the model in eval mode and each epoch's mean loss."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = NextItemModel(config, num_items, item_features)
    windows = TrainingWindows(sequences, times, config.max_length)
    log_q = None
    if num_items > config.full_softmax_items:
        counts = torch.zeros(num_items + 1, dtype=torch.float64)
        for start in range(0, len(sequences), 4096):  # a few thousand sequences at a time, not one copy of all
            chunk = np.concatenate([np.asarray(s, np.int64) for s in sequences[start:start + 4096]])
            counts += torch.bincount(torch.from_numpy(chunk), minlength=num_items + 1).double()[:num_items + 1]
        counts[0] = 0.0
        log_q = torch.log((counts + 1.0) / (counts + 1.0)[1:].sum()).float()
        log_q[0] = float("-inf")
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, foreach=True)
    losses: list[float] = []
    for epoch in range(epochs or config.max_epochs):
        model.train()
        order = torch.randperm(len(windows), generator=generator)
        total, steps = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            inputs, targets, target_times = windows.batch(order[start:start + config.batch_size].numpy())
            loss = model.loss(inputs, targets, target_times, log_q)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        losses.append(total / max(steps, 1))
        model.eval()
        if on_epoch is not None and on_epoch(epoch + 1, model):
            break
    return model.eval(), losses


def save_next_item(model: NextItemModel, directory: str | Path) -> Path:
    """safetensors weights + JSON config (no pickle) in `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / WEIGHTS_FILE))
    (directory / CONFIG_FILE).write_text(json.dumps({"config": model.config.model_dump(), "num_items": model.num_items,
                                                     "feature_width": model.feature_width}, indent=2))
    return directory


def load_next_item(directory: str | Path) -> NextItemModel:
    directory = Path(directory)
    meta = json.loads((directory / CONFIG_FILE).read_text())
    features = None
    if meta["feature_width"]:
        features = torch.zeros(meta["num_items"] + 1, meta["feature_width"])
    model = NextItemModel(NextItemConfig.model_validate(meta["config"]), meta["num_items"], features)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)))
    return model.eval()
