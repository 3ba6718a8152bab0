"""Synthetic inputs for any spec: valid transformed columns (docs/CONTRACTS.md section 2) with random
values, and a spec with any number of tasks. For smoke tests and cost benchmarks, not for quality."""

from __future__ import annotations

from typing import Any

import numpy as np

from grec.spec import CategoricalFeature, InputSpec, NumericFeature, SequenceFeature, TaskSpec

_WORDS = ("red", "blue", "comedy", "drama", "dress", "shirt", "great", "fits", "small", "classic", "new", "film")


def synthetic_spec(num_tasks: int, vocab_size: int = 1000, sequence_length: int = 20) -> InputSpec:
    """A MovieLens-like spec without text: user/item ids, a multi-hot genre, two numerics, one
    behavior sequence; `num_tasks` binary tasks over 4 scenarios."""
    return InputSpec(
        name=f"synthetic-{num_tasks}",
        categorical=(
            CategoricalFeature("user_id", vocab_size, source="user"),
            CategoricalFeature("item_id", vocab_size, source="item"),
            CategoricalFeature("genres", 24, multi_hot=True, source="item"),
        ),
        numeric=(NumericFeature("age", "user"), NumericFeature("price", "item")),
        sequences=(SequenceFeature("hist_item_id", sequence_length, "item_id"),),
        tasks=tuple(
            TaskSpec(f"task{i}", "binary", f"label_task{i}", descriptors={"scenario": f"s{i % 4}"})
            for i in range(num_tasks)
        ),
    )


def random_columns(spec: InputSpec, rows: int, seed: int = 0, labels: bool = True) -> dict[str, Any]:
    """Columns as `transform_to_numpy` gives them: int64 / float32 arrays, lists for multi-hot
    and sequences, strings for text, labels for every task when `labels`."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for feature in spec.categorical:
        if feature.multi_hot:
            columns[feature.name] = [rng.integers(1, feature.vocab_size, rng.integers(0, 4)) for _ in range(rows)]
        else:
            columns[feature.name] = rng.integers(1, feature.vocab_size, rows)
    for feature in spec.numeric:
        columns[feature.name] = rng.standard_normal(rows).astype(np.float32)
    for seq in spec.sequences:
        vocab = spec.categorical_feature(seq.vocab_feature).vocab_size
        ids = rng.integers(1, vocab, (rows, seq.length))
        history = rng.integers(0, seq.length + 1, rows)  # left padding: the first length-history ids are 0
        ids[np.arange(seq.length)[None, :] < (seq.length - history)[:, None]] = 0
        columns[seq.name] = list(ids)
    for feature in spec.text:
        columns[feature.name] = [" ".join(rng.choice(_WORDS, rng.integers(0, 6))) for _ in range(rows)]
    if labels:
        for task in spec.tasks:
            if task.kind == "binary":
                columns[task.label] = rng.integers(0, 2, rows).astype(np.float32)
            elif task.kind == "regression":
                columns[task.label] = rng.standard_normal(rows).astype(np.float32)
            else:
                columns[task.label] = rng.integers(0, int(task.num_classes), rows)
    return columns
