"""The sparse part: every embedding table of the model, behind one module taking KeyedJaggedTensors.

It is a separate submodule (`model.sparse_arch`) so a training job can shard it with torchrec's
DistributedModelParallel while the dense rest goes to DeepSpeed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    EmbeddingCollection,
    EmbeddingConfig,
    KeyedJaggedTensor,
    PoolingType,
)

from grec.spec import InputSpec


class _DropFxTracingNotice(logging.Filter):
    """torchrec's jagged tensors ask torch.fx whether it is tracing on every call; torch answers once
    with a notice about its own API that no grec user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is_fx_tracing will return true" not in record.getMessage()


logging.getLogger("torch.fx._symbolic_trace").addFilter(_DropFxTracingNotice())


@dataclass(frozen=True)
class TableInfo:
    name: str
    kind: str  # "pooled" (EmbeddingBagCollection) or "sequence" (EmbeddingCollection)
    features: tuple[str, ...]
    num_embeddings: int
    embedding_dim: int

    @property
    def num_parameters(self) -> int:
        return self.num_embeddings * self.embedding_dim


def sequence_table_name(vocab_feature: str) -> str:
    return f"seq_{vocab_feature}"


class SparseArch(nn.Module):
    """Pooled (mean) embeddings of categorical and multi-hot features through an
    EmbeddingBagCollection, and per-position embeddings of behavior sequences through an
    EmbeddingCollection (sequences sharing a vocabulary share one table)."""

    def __init__(self, spec: InputSpec, embedding_dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        device = device or torch.device("cpu")
        self.ebc = None
        self.ec = None
        if spec.categorical:
            self.ebc = EmbeddingBagCollection(
                tables=[
                    EmbeddingBagConfig(name=f"t_{f.name}", embedding_dim=embedding_dim, num_embeddings=f.vocab_size,
                                       feature_names=[f.name], pooling=PoolingType.MEAN)
                    for f in spec.categorical
                ],
                device=device,
            )
        if spec.sequences:
            by_vocab: dict[str, list[str]] = {}
            for seq in spec.sequences:
                by_vocab.setdefault(seq.vocab_feature, []).append(seq.name)
            self.ec = EmbeddingCollection(
                tables=[
                    EmbeddingConfig(name=sequence_table_name(vocab), embedding_dim=embedding_dim,
                                    num_embeddings=spec.categorical_feature(vocab).vocab_size, feature_names=names)
                    for vocab, names in by_vocab.items()
                ],
                device=device,
            )

    def forward(self, categorical: KeyedJaggedTensor | None,
                sequences: KeyedJaggedTensor | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Returns ({feature: [B, E]} pooled, {sequence: [B * L, E]} per position, flat)."""
        pooled: dict[str, torch.Tensor] = {}
        per_position: dict[str, torch.Tensor] = {}
        if self.ebc is not None:
            pooled = self.ebc(categorical).to_dict()
        if self.ec is not None:
            per_position = {name: jagged.values() for name, jagged in self.ec(sequences).items()}
        return pooled, per_position

    def tables(self) -> list[TableInfo]:
        """Every embedding table with its size, e.g. to plan sharding."""
        infos = []
        if self.ebc is not None:
            infos += [TableInfo(c.name, "pooled", tuple(c.feature_names), c.num_embeddings, c.embedding_dim)
                      for c in self.ebc.embedding_bag_configs()]
        if self.ec is not None:
            infos += [TableInfo(c.name, "sequence", tuple(c.feature_names), c.num_embeddings, c.embedding_dim)
                      for c in self.ec.embedding_configs()]
        return infos
