"""Collating labelled rows (training, validation): sampled negatives added for the implicit-feedback
tasks (grec/negatives.py), then the model's `Collator` (grec/batch.py)."""

from __future__ import annotations

import pyarrow as pa

from grec.batch import Batch, Collator
from grec.negatives import add_sampled_negatives


class LabelledCollator:
    """Labelled rows -> a Batch with `negatives_per_positive` sampled negatives per row for the
    implicit-feedback tasks of the collator's spec (which follows the model's tasks as they are added)."""

    def __init__(self, collator: Collator, negatives_per_positive: int, seed: int) -> None:
        self.collator = collator
        self.negatives_per_positive = negatives_per_positive
        self.seed = seed

    def __call__(self, table: pa.Table) -> Batch:
        return self.collator(add_sampled_negatives(table, self.collator.spec, self.negatives_per_positive, self.seed))
