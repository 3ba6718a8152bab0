"""Transformed columns (docs/CONTRACTS.md section 2) -> a batch of tensors."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import torch
from torchrec import KeyedJaggedTensor

from grec.spec import InputSpec

Columns = Mapping[str, Any] | pa.Table


@dataclass
class TokenizedText:
    texts: list[str]
    input_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, L]

    def to(self, device: torch.device | str) -> TokenizedText:
        return TokenizedText(self.texts, self.input_ids.to(device), self.attention_mask.to(device))


@dataclass
class Batch:
    """One batch of examples. `categorical` holds single and multi-hot ids (one key per feature),
    `sequences` the behavior sequences (each exactly its spec length, 0 = padding)."""

    size: int
    categorical: KeyedJaggedTensor | None = None
    sequences: KeyedJaggedTensor | None = None
    numeric: torch.Tensor | None = None  # [B, n_numeric] float32
    text: dict[str, TokenizedText] = field(default_factory=dict)
    labels: dict[str, torch.Tensor] = field(default_factory=dict)  # task name -> [B]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            size=self.size,
            categorical=None if self.categorical is None else self.categorical.to(torch.device(device)),
            sequences=None if self.sequences is None else self.sequences.to(torch.device(device)),
            numeric=None if self.numeric is None else self.numeric.to(device),
            text={k: v.to(device) for k, v in self.text.items()},
            labels={k: v.to(device) for k, v in self.labels.items()},
        )


def _get(columns: Columns, name: str) -> Any:
    if isinstance(columns, pa.Table):
        if name not in columns.column_names:
            raise KeyError(f"column {name!r} is missing; columns are {columns.column_names}")
        return columns.column(name).combine_chunks()
    if name not in columns:
        raise KeyError(f"column {name!r} is missing; columns are {sorted(columns)}")
    return columns[name]


def _has(columns: Columns, name: str) -> bool:
    return name in (columns.column_names if isinstance(columns, pa.Table) else columns)


def _num_rows(columns: Columns) -> int:
    if isinstance(columns, pa.Table):
        return columns.num_rows
    for value in columns.values():
        return len(value)
    raise ValueError("columns are empty")


def _scalars(value: Any, dtype: np.dtype) -> np.ndarray:
    if isinstance(value, (pa.Array, pa.ChunkedArray)):
        value = value.to_numpy(zero_copy_only=False)
    return np.array(value, dtype=dtype)  # a writable copy (torch.from_numpy shares memory)


def _ragged(value: Any) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (lengths, flat values)."""
    if isinstance(value, pa.ChunkedArray):
        value = value.combine_chunks()
    if isinstance(value, (pa.ListArray, pa.LargeListArray)):
        offsets = value.offsets.to_numpy()
        lengths = np.diff(offsets).astype(np.int64)
        if value.null_count:
            lengths = np.where(value.is_null().to_numpy(zero_copy_only=False), 0, lengths)
        flat = value.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
        return lengths, flat
    if isinstance(value, np.ndarray) and value.ndim == 2:
        return np.full(len(value), value.shape[1], dtype=np.int64), value.reshape(-1).astype(np.int64)
    rows = [np.asarray([] if r is None else r, dtype=np.int64).reshape(-1) for r in value]
    lengths = np.asarray([len(r) for r in rows], dtype=np.int64)
    flat = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return lengths, flat


def _check_ids(name: str, ids: np.ndarray, vocab_size: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"column {name!r}: ids must be in [0, {vocab_size}), got [{ids.min()}, {ids.max()}]")


class TokenCache:
    """A tokenizer that tokenizes each distinct text once: token ids kept in an LRU cache, padded per
    batch. Batches repeat texts (an item's title in every row about the item), and calling the
    tokenizer on every row was the largest cost of collation. The padded result equals
    `tokenizer(texts, padding=True, truncation=True, max_length=...)`. Safe across threads (data
    loaders collate in background threads)."""

    def __init__(self, tokenizer: Any, max_entries: int = 100_000) -> None:
        self.tokenizer = tokenizer
        self.max_entries = max_entries
        self._ids: OrderedDict[tuple[int, str], np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask), each [len(texts), longest]."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if (max_length, t) not in self._ids))
            if missing:
                encoded = self.tokenizer(missing, truncation=True, max_length=max_length)["input_ids"]
                for text, ids in zip(missing, encoded):
                    self._ids[(max_length, text)] = np.asarray(ids, dtype=np.int64)
            rows = []
            for text in texts:
                key = (max_length, text)
                self._ids.move_to_end(key)
                rows.append(self._ids[key])
            while len(self._ids) > self.max_entries:
                self._ids.popitem(last=False)
        width = max((len(r) for r in rows), default=0)
        input_ids = np.full((len(rows), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        left = self.tokenizer.padding_side == "left"
        for i, ids in enumerate(rows):
            span = slice(width - len(ids), width) if left else slice(0, len(ids))
            input_ids[i, span] = ids
            mask[i, span] = 1
        return torch.from_numpy(input_ids), torch.from_numpy(mask)


class Collator:
    """Turns transformed columns into a `Batch`: a KeyedJaggedTensor for categorical and multi-hot
    features, dense numerics, fixed-length sequences, tokenized text, and labels when present."""

    def __init__(self, spec: InputSpec, tokenizer: Any | None = None) -> None:
        if spec.text and tokenizer is None:
            raise ValueError("the spec has text features: a tokenizer is required")
        self.spec = spec
        self.tokens = TokenCache(tokenizer) if spec.text else None

    def __call__(self, columns: Columns) -> Batch:
        spec = self.spec
        size = _num_rows(columns)
        batch = Batch(size=size)
        if spec.categorical:
            lengths, values = [], []
            for feature in spec.categorical:
                column = _get(columns, feature.name)
                if feature.multi_hot:
                    feature_lengths, ids = _ragged(column)
                else:
                    ids = _scalars(column, np.int64).reshape(-1)
                    feature_lengths = np.ones(size, dtype=np.int64)
                _check_ids(feature.name, ids, feature.vocab_size)
                lengths.append(feature_lengths)
                values.append(ids)
            batch.categorical = KeyedJaggedTensor.from_lengths_sync(
                keys=[f.name for f in spec.categorical],
                values=torch.from_numpy(np.concatenate(values)),
                lengths=torch.from_numpy(np.concatenate(lengths)),
            )
        if spec.sequences:
            values = []
            for seq in spec.sequences:
                lengths, ids = _ragged(_get(columns, seq.name))
                if np.any(lengths != seq.length):
                    raise ValueError(f"sequence {seq.name!r}: every row must hold exactly {seq.length} ids")
                _check_ids(seq.name, ids, spec.categorical_feature(seq.vocab_feature).vocab_size)
                values.append(ids)
            batch.sequences = KeyedJaggedTensor.from_lengths_sync(
                keys=[s.name for s in spec.sequences],
                values=torch.from_numpy(np.concatenate(values)),
                lengths=torch.tensor([s.length for s in spec.sequences for _ in range(size)], dtype=torch.int64),
            )
        if spec.numeric:
            batch.numeric = torch.from_numpy(
                np.stack([_scalars(_get(columns, f.name), np.float32).reshape(-1) for f in spec.numeric], axis=1)
            )
        for feature in spec.text:
            column = _get(columns, feature.name)
            texts = column.to_pylist() if isinstance(column, (pa.Array, pa.ChunkedArray)) else list(column)
            texts = ["" if t is None else str(t) for t in texts]
            input_ids, attention_mask = self.tokens(texts, feature.max_length)
            batch.text[feature.name] = TokenizedText(texts, input_ids, attention_mask)
        for task in spec.tasks:
            if _has(columns, task.label):
                dtype = np.int64 if task.kind == "multiclass" else np.float32
                batch.labels[task.name] = torch.from_numpy(_scalars(_get(columns, task.label), dtype).reshape(-1))
        return batch
