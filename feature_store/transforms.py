"""Transforms fitted on the train split only, saved as a versioned JSON artifact, and applied by
the same code in training, batch jobs and serving (docs/CONTRACTS.md §2).

- Categorical (and multi-hot, and sequences through their `vocab_feature`): id 0 is padding or a
  missing value, ids 1..oov_buckets are unseen values placed by a stable hash, known values follow
  in order of decreasing train frequency (ties by value).
- Numeric: (x - mean) / std with train-split statistics; missing values become 0.0 (the mean).
- Text: kept raw; missing text becomes "".
- Labels: float32 (binary, regression) or int64 (multiclass), only when the input has them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.definitions import DatasetDefinition, FeatureKind, TaskKind, dtype_from_str, dtype_to_str
from feature_store.errors import SchemaError
from feature_store.hashing import stable_hash64_array
from feature_store.options import DEFAULT_OOV_BUCKETS

TRANSFORMS_FORMAT = "grec.transforms"
TRANSFORMS_VERSION = 1


@dataclass(frozen=True)
class Vocabulary:
    """Known values of one categorical feature and its hashed out-of-vocabulary buckets."""

    name: str
    value_type: pa.DataType
    values: tuple[Any, ...]
    oov_buckets: int
    multi_hot: bool = False

    def __post_init__(self) -> None:
        if self.oov_buckets < 1:
            raise ValueError(f"vocabulary {self.name!r}: oov_buckets must be >= 1, got {self.oov_buckets}")

    @property
    def size(self) -> int:
        """Number of ids, padding and OOV buckets included (the embedding table's rows)."""
        return 1 + self.oov_buckets + len(self.values)

    @cached_property
    def _value_set(self) -> pa.Array:
        return pa.array(self.values, type=self.value_type)

    def encode(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """int64 ids of raw values (nulls -> 0)."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if values.type != self.value_type:
            try:
                values = values.cast(self.value_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise SchemaError(f"feature {self.name!r}: expected values of type {self.value_type}, "
                                  f"found {values.type}") from err
        index = pc.index_in(values, value_set=self._value_set)
        known = index.is_valid().to_numpy(zero_copy_only=False)
        ids = np.zeros(len(values), dtype=np.int64)
        ids[known] = index.to_numpy(zero_copy_only=False)[known].astype(np.int64) + 1 + self.oov_buckets
        unseen = ~known & values.is_valid().to_numpy(zero_copy_only=False)
        if unseen.any():
            hashed = stable_hash64_array(values.filter(pa.array(unseen)))
            ids[unseen] = 1 + (hashed % np.uint64(self.oov_buckets)).astype(np.int64)
        return ids

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value_type": dtype_to_str(self.value_type), "multi_hot": self.multi_hot,
                "oov_buckets": self.oov_buckets, "values": list(self.values)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Vocabulary:
        return cls(data["name"], dtype_from_str(data["value_type"]), tuple(data["values"]),
                   data["oov_buckets"], data["multi_hot"])


@dataclass(frozen=True)
class Standardizer:
    name: str
    mean: float
    std: float

    def apply(self, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
        raw = pc.fill_null(values.cast(pa.float64()), self.mean).to_numpy()
        return ((raw - self.mean) / self.std).astype(np.float32)


@dataclass(frozen=True)
class SequenceTransform:
    name: str
    length: int
    vocab_feature: str


@dataclass(frozen=True)
class LabelTransform:
    task: str
    column: str
    kind: TaskKind


class TransformSet:
    """Fitted transforms for one dataset; see the module docstring for what each does."""

    def __init__(self, vocabularies: Iterable[Vocabulary], standardizers: Iterable[Standardizer],
                 sequences: Iterable[SequenceTransform], text: Iterable[str],
                 labels: Iterable[LabelTransform]) -> None:
        self.vocabularies = {v.name: v for v in vocabularies}
        self.standardizers = {s.name: s for s in standardizers}
        self.sequences = {s.name: s for s in sequences}
        self.text = tuple(text)
        self.labels = tuple(labels)
        for seq in self.sequences.values():
            if seq.vocab_feature not in self.vocabularies:
                raise ValueError(f"sequence {seq.name!r} uses vocabulary {seq.vocab_feature!r}, which is not fitted")

    # --- fitting ---
    @classmethod
    def fit(cls, definition: DatasetDefinition, train_batches: Iterable[pa.Table],
            oov_buckets: int = DEFAULT_OOV_BUCKETS, min_count: int = 1) -> TransformSet:
        """Fits on the train split only, streamed in batches. Values seen fewer than `min_count`
        times are left out of the vocabulary (they hash to an OOV bucket)."""
        features = [f for f, _ in definition.sourced_features()]
        counters = {f.name: Counter() for f in features if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.MULTI_HOT)}
        moments = {f.name: np.zeros(3) for f in features if f.kind is FeatureKind.NUMERIC}  # n, sum, sum of squares
        for batch in train_batches:
            for name, counter in counters.items():
                column = batch.column(name)
                if pa.types.is_list(column.type):
                    column = pc.list_flatten(column)
                for entry in pc.value_counts(column.drop_null()).to_pylist():
                    counter[entry["values"]] += entry["counts"]
            for name, acc in moments.items():
                values = batch.column(name).drop_null().cast(pa.float64()).to_numpy()
                acc += (len(values), values.sum(), np.square(values).sum())
        vocabularies = []
        for feature in features:
            if feature.name not in counters:
                continue
            kept = [(v, c) for v, c in counters[feature.name].items() if c >= min_count]
            kept.sort(key=lambda vc: (-vc[1], vc[0]))
            multi = feature.kind is FeatureKind.MULTI_HOT
            value_type = feature.dtype.value_type if multi else feature.dtype
            vocabularies.append(Vocabulary(feature.name, value_type, tuple(v for v, _ in kept), oov_buckets, multi))
        standardizers = []
        for name, (n, total, squares) in moments.items():
            mean = total / n if n else 0.0
            std = math.sqrt(max(squares / n - mean * mean, 0.0)) if n else 0.0
            # A constant (or never seen) feature: std 1 keeps it finite; it then carries no signal.
            standardizers.append(Standardizer(name, float(mean), float(std) if std > 1e-12 else 1.0))
        return cls(
            vocabularies, standardizers,
            [SequenceTransform(s.name, s.length, s.vocab_feature) for s in definition.sequences],
            [f.name for f in features if f.kind is FeatureKind.TEXT],
            [LabelTransform(t.name, t.label, t.kind) for t in definition.tasks],
        )

    def vocab_size(self, name: str) -> int:
        if name not in self.vocabularies:
            raise KeyError(f"no vocabulary for {name!r}; vocabularies: {sorted(self.vocabularies)}")
        return self.vocabularies[name].size

    def vocab_sizes(self) -> dict[str, int]:
        """Ids per categorical feature (embedding rows), as `DatasetDefinition.dataset_spec` takes them."""
        return {name: vocab.size for name, vocab in self.vocabularies.items()}

    # --- applying ---
    def transform(self, table: pa.Table) -> pa.Table:
        """Raw rows (training set or serving request rows) -> model columns (CONTRACTS.md §2)."""
        return pa.table(self._columns(table))

    def transform_to_numpy(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Like `transform`, as numpy: categorical [B] int64, multi-hot an object array of int64
        arrays, numeric [B] float32, sequences [B, length] int64, text an object array of str,
        labels [B] float32 or int64."""
        out: dict[str, np.ndarray] = {}
        for name, column in self._columns(table).items():
            if name in self.sequences:
                length = self.sequences[name].length
                out[name] = pc.list_flatten(column).to_numpy().reshape(len(column), length)
            elif pa.types.is_list(column.type):
                flat = pc.list_flatten(column).to_numpy()
                offsets = column.offsets.to_numpy()
                parts = np.empty(len(column), dtype=object)
                parts[:] = [flat[offsets[i]:offsets[i + 1]] for i in range(len(column))]
                out[name] = parts
            elif pa.types.is_string(column.type):
                out[name] = np.array(column.to_pylist(), dtype=object)
            else:
                out[name] = column.to_numpy()
        return out

    def _columns(self, table: pa.Table) -> dict[str, pa.Array]:
        columns: dict[str, pa.Array] = {}
        for name, vocab in self.vocabularies.items():
            column = _require(table, name)
            columns[name] = _encode_multi_hot(vocab, column) if vocab.multi_hot else pa.array(vocab.encode(column))
        for name, standardizer in self.standardizers.items():
            columns[name] = pa.array(standardizer.apply(_require(table, name)))
        for name, seq in self.sequences.items():
            columns[name] = _encode_sequence(self.vocabularies[seq.vocab_feature], _require(table, name), seq.length)
        for name in self.text:
            columns[name] = pc.fill_null(_require(table, name).cast(pa.string()), "").combine_chunks()
        for label in self.labels:
            if label.column in table.column_names:
                target = pa.int64() if label.kind is TaskKind.MULTICLASS else pa.float32()
                columns[label.column] = table.column(label.column).cast(target).combine_chunks()
        return columns

    # --- the JSON artifact ---
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRANSFORMS_FORMAT, "version": TRANSFORMS_VERSION,
            "vocabularies": [v.to_dict() for v in self.vocabularies.values()],
            "standardizers": [{"name": s.name, "mean": s.mean, "std": s.std} for s in self.standardizers.values()],
            "sequences": [{"name": s.name, "length": s.length, "vocab_feature": s.vocab_feature}
                          for s in self.sequences.values()],
            "text": list(self.text),
            "labels": [{"task": lab.task, "column": lab.column, "kind": str(lab.kind)} for lab in self.labels],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TransformSet:
        if data.get("format") != TRANSFORMS_FORMAT:
            raise ValueError(f"not a grec transforms artifact (format={data.get('format')!r})")
        if data.get("version") != TRANSFORMS_VERSION:
            raise ValueError(f"transforms version {data.get('version')!r} is not supported "
                             f"(this grec reads version {TRANSFORMS_VERSION})")
        return cls(
            [Vocabulary.from_dict(v) for v in data["vocabularies"]],
            [Standardizer(s["name"], s["mean"], s["std"]) for s in data["standardizers"]],
            [SequenceTransform(s["name"], s["length"], s["vocab_feature"]) for s in data["sequences"]],
            data["text"],
            [LabelTransform(lab["task"], lab["column"], TaskKind(lab["kind"])) for lab in data["labels"]],
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TransformSet:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _require(table: pa.Table, name: str) -> pa.ChunkedArray:
    if name not in table.column_names:
        raise SchemaError(f"input has no column {name!r}, which the transforms need; "
                          f"found {table.column_names}")
    return table.column(name)


def _list_parts(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """Flat values and per-row lengths of a list column (null lists count as empty)."""
    column = column.combine_chunks()
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy().astype(np.int64)
    return pc.list_flatten(column), lengths


def _encode_multi_hot(vocab: Vocabulary, column: pa.ChunkedArray) -> pa.ListArray:
    flat, lengths = _list_parts(column)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(vocab.encode(flat)))


def _encode_sequence(vocab: Vocabulary, column: pa.ChunkedArray, length: int) -> pa.ListArray:
    """Exactly `length` ids per row, oldest first, left-padded with 0; longer inputs keep the last."""
    flat, lengths = _list_parts(column)
    ids = vocab.encode(flat)
    rows = len(lengths)
    kept = np.minimum(lengths, length)
    starts = np.r_[0, np.cumsum(lengths)[:-1]] + (lengths - kept)
    kept_offsets = np.r_[0, np.cumsum(kept)[:-1]]
    position = np.arange(kept.sum()) - np.repeat(kept_offsets, kept)
    row = np.repeat(np.arange(rows), kept)
    matrix = np.zeros((rows, length), dtype=np.int64)
    matrix[row, length - np.repeat(kept, kept) + position] = ids[np.repeat(starts, kept) + position]
    offsets = np.arange(0, (rows + 1) * length, length, dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.ravel()))
