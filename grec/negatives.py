"""Sampled negatives for implicit-feedback tasks (every labelled row a positive).

A batch of transformed rows gets `per_positive` copies of itself in which the item side (the item id,
the item's categorical and numeric features and its text) is taken from another row of the batch:
negatives drawn from the batch's own items, that is by interaction frequency, the distribution the
candidates of a recommendation come from. A copy's implicit tasks are labelled 0 (missing where the
drawn item happens to be the row's own item); every other task's label is missing on the copies, so
their losses and metrics read the original rows only.

The draw depends on the batch's content and `seed` only, so a replayed batch (a resumed epoch, a
validation pass) gets the same negatives.
"""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa

from grec.spec import InputSpec


def implicit_tasks(spec: InputSpec) -> list[str]:
    return [t.name for t in spec.tasks if t.implicit]


def item_side_columns(spec: InputSpec) -> list[str]:
    """The transformed columns that describe the candidate item."""
    names = [f.name for group in (spec.categorical, spec.numeric, spec.text) for f in group if f.source == "item"]
    if spec.item_id and spec.item_id not in names:
        names.insert(0, spec.item_id)
    return names


def _missing(column: pa.ChunkedArray | pa.Array, rows: int) -> pa.Array:
    if pa.types.is_integer(column.type):  # multiclass labels: -1 is missing
        return pa.array(np.full(rows, -1, dtype=np.int64)).cast(column.type)
    return pa.array(np.full(rows, np.nan, dtype=np.float32)).cast(column.type)


def add_sampled_negatives(table: pa.Table, spec: InputSpec, per_positive: int, seed: int = 0) -> pa.Table:
    """`table` (transformed columns with labels) followed by its sampled negatives (see the module's
    docstring); unchanged when the spec has no implicit task, the table none of its labels, or
    `per_positive` is 0."""
    implicit = [t for t in spec.tasks if t.implicit and t.label in table.column_names]
    rows = table.num_rows
    if not implicit or per_positive < 1 or rows < 2:
        return table
    item_columns = [c for c in item_side_columns(spec) if c in table.column_names]
    item_ids = np.asarray(table.column(spec.item_id).to_numpy(zero_copy_only=False)).reshape(-1)
    content = zlib.crc32(np.ascontiguousarray(item_ids, dtype=np.int64).tobytes())
    rng = np.random.default_rng([seed, content, rows])
    own = np.tile(np.arange(rows), per_positive)
    # Another row's item: an offset in 1 .. rows - 1 never picks the row itself.
    drawn = (own + rng.integers(1, rows, size=len(own))) % rows
    copies = table.take(pa.array(own))
    columns = {}
    implicit_labels = {t.label for t in implicit}
    labels = {t.label for t in spec.tasks}
    clash = item_ids[drawn] == item_ids[own]  # the same item in another row: not a negative
    for name in table.column_names:
        if name in item_columns:
            columns[name] = table.column(name).take(pa.array(drawn))
        elif name in implicit_labels:
            columns[name] = pa.array(np.where(clash, np.nan, 0.0).astype(np.float32)).cast(table.schema.field(name).type)
        elif name in labels:
            columns[name] = _missing(table.column(name), len(own))
        else:
            columns[name] = copies.column(name)
    negatives = pa.table(columns).cast(table.schema)
    return pa.concat_tables([table, negatives])
