"""Checks a table against the schema of the view it is ingested into.

Wrong types fail with the column, the expected and the found type. Only conversions that keep
every value are applied silently: narrower integers to wider ones (overflow fails), integers to
floats, float32 to float64, large/dictionary strings to strings, and timestamps of any unit or
zone to UTC microseconds (naive timestamps are read as UTC; sub-microsecond digits are dropped).

Labels are checked against their task's kind: binary labels are 0 or 1, multiclass labels class
ids in [0, num_classes), regression labels finite numbers.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.definitions import EventView, FeatureView, Task, TaskKind
from feature_store.errors import IngestionError, SchemaError


def convertible(found: pa.DataType, expected: pa.DataType) -> bool:
    """Whether `found` converts to `expected` keeping every value (see the module docstring)."""
    if found == expected:
        return True
    if pa.types.is_timestamp(expected):
        return pa.types.is_timestamp(found)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(found)
    if pa.types.is_floating(expected):
        return pa.types.is_integer(found) or (pa.types.is_floating(found) and found.bit_width <= expected.bit_width)
    if pa.types.is_string(expected):
        return pa.types.is_large_string(found) or (
            pa.types.is_dictionary(found) and pa.types.is_string(found.value_type))
    if pa.types.is_list(expected):
        return (pa.types.is_list(found) or pa.types.is_large_list(found)) and convertible(
            found.value_type, expected.value_type)
    return False


def _convert(column: pa.ChunkedArray, expected: pa.DataType, where: str) -> pa.ChunkedArray:
    if column.type == expected:
        return column
    if pa.types.is_timestamp(expected) and column.type.tz is None:
        column = pc.assume_timezone(column, "UTC")
    try:
        # Timestamps: dropping nanoseconds is intended; integers: an overflow must fail.
        return column.cast(expected, safe=not pa.types.is_timestamp(expected))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise SchemaError(f"{where}: values do not fit {expected} (found {column.type}): {err}") from err


def _first_row(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


def _label_problem(task: Task, column: pa.ChunkedArray) -> tuple[pa.ChunkedArray, str] | None:
    """(mask of bad rows, what was expected), or None when every label fits the task's kind."""
    if task.kind is TaskKind.BINARY:
        bad, expected = pc.invert(pc.is_in(column, value_set=pa.array([0, 1], column.type))), "0 or 1"
    elif task.kind is TaskKind.MULTICLASS:
        bad = pc.or_(pc.less(column, 0), pc.greater_equal(column, task.num_classes))
        expected = f"a class id in [0, {task.num_classes})"
    else:
        bad, expected = pc.invert(pc.is_finite(column)), "a finite number"
    bad = pc.and_(pc.fill_null(bad, False), pc.is_valid(column))  # a missing label is no bad label
    return (bad, expected) if pc.any(bad).as_py() else None


def check_labels(table: pa.Table, tasks: tuple[Task, ...], where: str) -> None:
    """Raises IngestionError naming the label column, the expected range and the first bad value."""
    for task in tasks:
        column = table.column(task.label)
        problem = _label_problem(task, column)
        if problem is None:
            continue
        bad, expected = problem
        row = _first_row(bad)
        count = pc.sum(bad.cast(pa.int64())).as_py()
        raise IngestionError(f"{where}, column {task.label!r} ({task.kind} task {task.name!r}): expected "
                             f"{expected}, found {column[row].as_py()!r} (first at row {row}, {count} rows in all)")


def conform_table(table: pa.Table, view: FeatureView | EventView) -> pa.Table:
    """Returns `table` with exactly the view schema's columns, order and types, or raises.

    Raises SchemaError for missing or extra columns and wrong types, IngestionError for an empty
    table, null values in non-nullable columns (keys, labels), missing timestamps and labels out
    of their task's range.
    """
    schema, timestamp_field = view.schema, view.timestamp_field
    where = f"view {view.name!r}"
    if table.num_rows == 0:
        raise IngestionError(f"{where}: the input has no rows")
    found_names = set(table.column_names)
    missing = [n for n in schema.names if n not in found_names]
    extra = sorted(found_names - set(schema.names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if extra:
            parts.append(f"unexpected columns {extra}")
        raise SchemaError(f"{where}: {' and '.join(parts)}; expected exactly {schema.names}")
    columns = []
    for field in schema:
        column = table.column(field.name)
        column_where = f"{where}, column {field.name!r}"
        if not convertible(column.type, field.type):
            raise SchemaError(f"{column_where}: expected type {field.type}, found {column.type}")
        column = _convert(column, field.type, column_where)
        if not field.nullable and column.null_count:
            what = "missing timestamps" if field.name == timestamp_field else "null values"
            raise IngestionError(f"{column_where}: {column.null_count} {what} (first at row "
                                 f"{_first_row(pc.is_null(column))}); every row needs one")
        columns.append(column)
    conformed = pa.Table.from_arrays(columns, schema=schema)
    if isinstance(view, EventView):
        check_labels(conformed, view.tasks, where)
    return conformed
