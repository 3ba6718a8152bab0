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

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, Field

MATRIX_FILE = "covisitation.npz"
# Events whose pairs are counted at once (memory: about 16 bytes x 2 x window per event, twice while
# they become a sparse matrix).
EVENTS_PER_CHUNK = 131_072
SEQUENCES_PER_COUNT = 4096
# Count entries held at once (12 bytes each, about three times while chunks are merged into them).
ENTRIES_PER_BLOCK = 8_000_000


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
        """[users, N] dense scores of every item row 1..N (column j is row j + 1). The product is made
        dense before column 0 is dropped: slicing the sparse product would copy all of it once more."""
        return (self.user_weights(histories) @ self.matrix).toarray()[:, 1:].astype(np.float32)

    def save(self, directory: str | Path) -> None:
        sp.save_npz(Path(directory) / MATRIX_FILE, self.matrix, compressed=True)

    @classmethod
    def load(cls, directory: str | Path, config: CovisitationConfig) -> Covisitation:
        matrix = sp.load_npz(Path(directory) / MATRIX_FILE)
        # save_npz/load_npz keep arrays only (allow_pickle is off in scipy's loader): no code runs.
        return cls(matrix, config)


def _weight_scale(window: int, backward_weight: float) -> float:
    """A factor that makes every pair weight (1/d and backward_weight/d, d = 1..window) a whole number
    when it exists (the default settings: 2 x lcm(1..window)), else 1. Sums of whole numbers in
    float64 are exact below 2**53, so the counts do not depend on how events are chunked or summed."""
    scale = float(np.lcm.reduce(np.arange(1, window + 1)))
    for factor in (1, 2, 4, 5, 8, 10, 100):
        weights = np.array([scale * factor / d for d in range(1, window + 1)] +
                           [scale * factor * backward_weight / d for d in range(1, window + 1)])
        if np.all(weights == np.round(weights)) and weights.max() * 2.0**20 < 2.0**53:
            return scale * factor
    return 1.0


def _blocks(events_per_item: np.ndarray, window: int, max_entries: int) -> list[tuple[int, int]]:
    """Row ranges [first, end) whose counts hold at most `max_entries` entries: a row's entries are at
    most 2 x window per event of its item and at most one per column."""
    bound = np.minimum(2 * window * events_per_item.astype(np.int64), len(events_per_item))
    blocks, first, held = [], 0, 0
    for row, entries in enumerate(bound.tolist()):
        if held and held + entries > max_entries:
            blocks.append((first, row))
            first, held = row, 0
        held += entries
    blocks.append((first, len(events_per_item)))
    return blocks


def pair_count_blocks(sequences: Sequence[np.ndarray], num_items: int, window: int, backward_weight: float,
                      events_per_item: np.ndarray | None = None,
                      max_entries: int = ENTRIES_PER_BLOCK) -> Iterator[tuple[int, sp.csr_matrix]]:
    """The co-visitation counts of users' ordered histories (before normalization, diagonal left out)
    as row blocks: (first row, counts of rows first.. [rows, N + 1]). Each block is summed over the
    events chunk by chunk (EVENTS_PER_CHUNK events' pairs at once, int32 indices), so memory holds
    one block of at most `max_entries` entries, whatever the number of events; a block costs one
    pass over the events."""
    size = num_items + 1
    scale = _weight_scale(window, backward_weight)
    if events_per_item is None:
        events_per_item = item_counts(sequences, num_items)
    for first, end in _blocks(events_per_item, window, max_entries):
        total: sp.csr_matrix | None = None
        waiting: list[sp.csr_matrix] = []
        for flat, owner in _chunks(sequences):
            rows, cols, values = [], [], []
            for distance in range(1, window + 1):
                same = owner[:-distance] == owner[distance:] if len(flat) > distance else np.zeros(0, bool)
                before, after = flat[:-distance][same], flat[distance:][same]
                for source, target, weight in ((before, after, 1.0), (after, before, backward_weight)):
                    keep = (source >= first) & (source < end) & (source != target)
                    rows.append(source[keep] - first)
                    cols.append(target[keep])
                    values.append(np.full(int(keep.sum()), scale * weight / distance))
            entries = sum(len(r) for r in rows)
            if entries:
                waiting.append(sp.coo_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                                             shape=(end - first, size)).tocsr())
            del rows, cols, values
            if waiting and sum(m.nnz for m in waiting) >= (total.nnz if total is not None else 0):
                total = _sum(([total] if total is not None else []) + waiting)
                waiting = []
        parts = ([total] if total is not None else []) + waiting
        counts = _sum(parts) if parts else sp.csr_matrix((end - first, size), dtype=np.float64)
        del total, waiting, parts
        counts.sum_duplicates()
        if scale != 1.0:
            counts.data /= scale
        yield first, counts


def _chunks(sequences: Sequence[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """About EVENTS_PER_CHUNK events at a time: (item rows, int32; the sequence each belongs to)."""
    start = 0
    while start < len(sequences):
        chunk, events = [], 0
        while start < len(sequences) and (events < EVENTS_PER_CHUNK or not chunk):
            chunk.append(sequences[start])
            events += len(chunk[-1])
            start += 1
        yield (np.concatenate(chunk).astype(np.int32, copy=False),
               np.repeat(np.arange(len(chunk), dtype=np.int32), [len(s) for s in chunk]))


def _sum(matrices: list[sp.csr_matrix]) -> sp.csr_matrix:
    out = matrices[0]
    for matrix in matrices[1:]:
        out = out + matrix
    return out


def _keep_strongest(matrix: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Each row's `keep` largest entries; of equal entries at the cut, the lower columns (the more
    popular items: catalogue rows are ordered by interactions), so the choice never depends on
    the order entries are stored in."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    rows, cols, values = [], [], []
    for row in range(matrix.shape[0]):
        begin, end = matrix.indptr[row], matrix.indptr[row + 1]
        if end == begin:
            continue
        data, index = matrix.data[begin:end], matrix.indices[begin:end]
        if len(data) > keep:
            cut = -np.partition(-data, keep - 1)[keep - 1]
            above = np.flatnonzero(data > cut)
            top = np.sort(np.r_[above, np.flatnonzero(data == cut)[:keep - len(above)]])
            data, index = data[top], index[top]
        rows.append(np.full(len(data), row))
        cols.append(index)
        values.append(data)
    if not rows:
        return sp.csr_matrix(matrix.shape, dtype=np.float32)
    return sp.csr_matrix((np.concatenate(values).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                         shape=matrix.shape)


def item_counts(sequences: Sequence[np.ndarray], num_items: int) -> np.ndarray:
    """[N + 1] events per item row (the popularity the normalization divides by, before the +1)."""
    counts = np.zeros(num_items + 1, dtype=np.int64)
    for start in range(0, len(sequences), SEQUENCES_PER_COUNT):
        chunk = [np.asarray(s, np.int64) for s in sequences[start:start + SEQUENCES_PER_COUNT]]
        counts += np.bincount(np.concatenate(chunk) if chunk else np.zeros(0, np.int64),
                              minlength=num_items + 1)[:num_items + 1]
    return counts


def _normalized_block(counts: sp.csr_matrix, first: int, popularity: np.ndarray,
                      config: CovisitationConfig) -> sp.csr_matrix:
    """Rows first.. of diag(p^-s) @ C @ diag(p^-t), product by product (the same floats as the
    matrix products), pruned to each row's strongest `neighbours`."""
    matrix = counts.copy()
    rows = first + np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    matrix.data = (popularity ** -config.source_exponent)[rows] * matrix.data
    del rows
    matrix.data *= (popularity ** -config.target_exponent)[matrix.indices]
    return _keep_strongest(matrix, config.neighbours)


def build_covisitations(sequences: Sequence[np.ndarray], num_items: int, configs: Sequence[CovisitationConfig],
                        max_entries: int = ENTRIES_PER_BLOCK) -> list[Covisitation]:
    """The co-visitation of each of `configs` (which share `window` and `backward_weight`: one count,
    block by block, serves them all)."""
    if not configs:
        return []
    window, backward = configs[0].window, configs[0].backward_weight
    if any((c.window, c.backward_weight) != (window, backward) for c in configs):
        raise ValueError("build_covisitations counts once: its settings must share window and backward_weight")
    events_per_item = item_counts(sequences, num_items)
    popularity = events_per_item.astype(np.float64) + 1.0
    blocks: list[list[sp.csr_matrix]] = [[] for _ in configs]
    for first, counts in pair_count_blocks(sequences, num_items, window, backward, events_per_item, max_entries):
        for pruned, config in zip(blocks, configs, strict=True):
            pruned.append(_normalized_block(counts, first, popularity, config))
        del counts
    return [Covisitation(sp.vstack(pruned, format="csr"), config) for pruned, config in zip(blocks, configs,
                                                                                               strict=True)]


def build_covisitation(sequences: Sequence[np.ndarray], num_items: int,
                       config: CovisitationConfig | None = None) -> Covisitation:
    """The co-visitation of users' ordered histories (item rows 1..N, oldest first)."""
    return build_covisitations(sequences, num_items, [config or CovisitationConfig()])[0]
