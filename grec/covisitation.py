"""Co-visitation: which items users take up close to each other in their histories.

For every user's ordered history (item rows 1..N), each item `a` followed within `window` positions
by `b` adds 1/d to C[a, b] (d the distance) and `backward_weight`/d to C[b, a]. A pair is then
normalized by the popularities of both items, p(a)^source_exponent * p(b)^target_exponent, so that
an everywhere item does not neighbour everything, and each item keeps its `neighbours` strongest
neighbours (a sparse matrix: memory grows with items x neighbours, not items squared).

A user's score of item b sums, over the user's last `last_items` items (the latest weighted 1, each
older one `recency_decay` times the next), their co-visitation with b: "what people took up next to
what you just took up". On MovieLens-100K's per-user time split this alone beats EASE and SASRec
(docs/benchmarks/recommend.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

MATRIX_FILE = "covisitation.npz"
# Events whose pairs are counted at once (memory: about 24 bytes x 2 x window per event).
EVENTS_PER_CHUNK = 2_000_000


class CovisitationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    window: int = Field(10, ge=1, description="positions after an item whose items count as taken up next to it")
    backward_weight: float = Field(0.5, ge=0, description="weight of an item taken up before, against one after")
    source_exponent: float = Field(0.5, ge=0, description="popularity normalization of the item one comes from")
    target_exponent: float = Field(0.5, ge=0, description="popularity normalization of the item scored")
    neighbours: int = Field(200, ge=1, description="strongest neighbours kept per item")
    last_items: int = Field(50, ge=1, description="a user's latest items that vote")
    recency_decay: float = Field(0.9, gt=0, le=1, description="weight of each older voting item relative to the next")


class Covisitation:
    """The normalized, pruned co-visitation matrix [N + 1, N + 1] (row and column 0: padding)."""

    def __init__(self, matrix: sp.csr_matrix, config: CovisitationConfig) -> None:
        self.matrix = matrix.tocsr()
        self.config = config

    @property
    def num_items(self) -> int:
        return self.matrix.shape[0] - 1

    def user_weights(self, histories: Sequence[np.ndarray]) -> sp.csr_matrix:
        """[users, N + 1]: each user's voting weight on each item of its recent history."""
        rows, cols, values = [], [], []
        for user, items in enumerate(histories):
            recent = np.asarray(items[-self.config.last_items:], dtype=np.int64)
            recent = recent[recent > 0]
            rows.append(np.full(len(recent), user))
            cols.append(recent)
            values.append(self.config.recency_decay ** np.arange(len(recent))[::-1])
        shape = (len(histories), self.matrix.shape[0])
        if not rows:
            return sp.csr_matrix(shape)
        return sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=shape)

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """[users, N] dense scores of every item row 1..N (column j is row j + 1)."""
        return np.asarray((self.user_weights(histories) @ self.matrix)[:, 1:].todense(), dtype=np.float32)

    def save(self, directory: str | Path) -> None:
        sp.save_npz(Path(directory) / MATRIX_FILE, self.matrix, compressed=True)

    @classmethod
    def load(cls, directory: str | Path, config: CovisitationConfig) -> Covisitation:
        matrix = sp.load_npz(Path(directory) / MATRIX_FILE)
        # save_npz/load_npz keep arrays only (allow_pickle is off in scipy's loader): no code runs.
        return cls(matrix, config)


def _pair_counts(sequences: Sequence[np.ndarray], num_items: int, config: CovisitationConfig) -> sp.csr_matrix:
    size = num_items + 1
    counts = sp.csr_matrix((size, size), dtype=np.float64)
    start = 0
    while start < len(sequences):
        chunk, events = [], 0
        while start < len(sequences) and (events < EVENTS_PER_CHUNK or not chunk):
            chunk.append(np.asarray(sequences[start], dtype=np.int64))
            events += len(chunk[-1])
            start += 1
        flat = np.concatenate(chunk) if chunk else np.zeros(0, np.int64)
        owner = np.repeat(np.arange(len(chunk)), [len(s) for s in chunk])
        rows, cols, values = [], [], []
        for distance in range(1, config.window + 1):
            same = owner[:-distance] == owner[distance:] if len(flat) > distance else np.zeros(0, bool)
            before, after = flat[:-distance][same], flat[distance:][same]
            rows += [before, after]
            cols += [after, before]
            values += [np.full(len(before), 1.0 / distance), np.full(len(after), config.backward_weight / distance)]
        if rows:
            counts = counts + sp.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                                            shape=(size, size))
    counts.setdiag(0.0)
    counts.eliminate_zeros()
    return counts.tocsr()


def _keep_strongest(matrix: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Each row's `keep` largest entries."""
    matrix = matrix.tocsr()
    rows, cols, values = [], [], []
    for row in range(matrix.shape[0]):
        begin, end = matrix.indptr[row], matrix.indptr[row + 1]
        if end == begin:
            continue
        data, index = matrix.data[begin:end], matrix.indices[begin:end]
        if len(data) > keep:
            top = np.argpartition(-data, keep - 1)[:keep]
            data, index = data[top], index[top]
        rows.append(np.full(len(data), row))
        cols.append(index)
        values.append(data)
    if not rows:
        return sp.csr_matrix(matrix.shape, dtype=np.float32)
    return sp.csr_matrix((np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                         shape=matrix.shape)


def build_covisitation(sequences: Sequence[np.ndarray], num_items: int,
                       config: CovisitationConfig | None = None) -> Covisitation:
    """The co-visitation of users' ordered histories (item rows 1..N, oldest first)."""
    config = config or CovisitationConfig()
    counts = _pair_counts(sequences, num_items, config)
    popularity = np.bincount(np.concatenate([np.asarray(s, np.int64) for s in sequences]) if len(sequences) else
                             np.zeros(0, np.int64), minlength=num_items + 1)[:num_items + 1].astype(np.float64) + 1.0
    normalized = sp.diags(popularity ** -config.source_exponent) @ counts @ sp.diags(popularity ** -config.target_exponent)
    return Covisitation(_keep_strongest(normalized, config.neighbours), config)
