"""A declared file's columns turned into what a view holds, checked as the rows pass: ids, times
(numbers in a unit, text in a format or ISO 8601, timestamps, dates), multi-hot lists (list columns,
separated strings, 0/1 flag columns), parts of dates and class ids.

Every problem names the file, the column, what was expected, what was found and the first row
that does not fit (rows count a file's data rows from 1). All functions take a `FileBatch` (rows of
one file) and return one array per row of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.definitions import TIMESTAMP_TYPE
from feature_store.errors import SourceFileError
from feature_store.sources.files import FileBatch, cast_column

_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000, "us": 1, "ns": 0.001}
_DATE_PARTS = {"year": pc.year, "month": pc.month, "day": pc.day, "weekday": pc.day_of_week, "hour": pc.hour}
ISO_EXAMPLE = "2024-01-31T12:00:00Z"


def _where(batch: FileBatch, column: str) -> str:
    return f"file {batch.file}, column {column!r}"


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    """Index of the first true value."""
    return int(np.flatnonzero(pc.fill_null(mask, False).to_numpy(zero_copy_only=False))[0])


def _rows(batch: FileBatch, mask: pa.ChunkedArray | pa.Array) -> str:
    count = int(pc.sum(pc.fill_null(mask, False).cast(pa.int64())).as_py())
    first = batch.first_row + _first(mask)
    return f"row {first}" + (f" ({count} rows in this part of the file)" if count > 1 else "")


def require_values(batch: FileBatch, column: str, role: str, remedy: str = "") -> pa.ChunkedArray:
    """The column, or an error at its first empty value (`role` says what the value is for)."""
    values = batch.table.column(column)
    if values.null_count:
        raise SourceFileError(f"{_where(batch, column)}: expected {role} in every row, found an empty value in "
                              f"{_rows(batch, pc.is_null(values))}{remedy}")
    return values


def cast(batch: FileBatch, column: str, dtype: pa.DataType) -> pa.ChunkedArray:
    """The column as `dtype`, where no value changes."""
    return cast_column(batch.file, pa.field(column, dtype), batch.table.column(column))


def timestamps(batch: FileBatch, column: str, unit: str | None, format: str | None) -> pa.ChunkedArray:
    """The column's times as UTC microseconds; naive times are UTC."""
    values = require_values(batch, column, "a time")
    dtype = values.type
    where = _where(batch, column)
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        if unit or format:
            raise SourceFileError(f"{where}: holds {dtype}, which needs no unit or format; remove them from the "
                                  "declaration")
        if pa.types.is_date(dtype):
            values = values.cast(pa.timestamp("us"))
        if values.type.tz is None:
            values = pc.assume_timezone(values, "UTC")
        return values.cast(TIMESTAMP_TYPE, safe=False)  # below a microsecond is dropped on purpose
    if pa.types.is_integer(dtype) or pa.types.is_floating(dtype):
        if unit is None:
            raise SourceFileError(f"{where}: holds numbers ({dtype}); declare their unit (s, ms, us or ns since "
                                  "1970-01-01 UTC)" + (f", not a format" if format else ""))
        if pa.types.is_integer(dtype):
            stamped = values.cast(pa.int64()).cast(pa.timestamp(unit))
        else:
            stamped = pc.floor(pc.multiply(values.cast(pa.float64()), _US_PER_UNIT[unit])).cast(
                pa.int64()).cast(pa.timestamp("us"))
        return pc.assume_timezone(stamped, "UTC").cast(TIMESTAMP_TYPE, safe=False)
    if pa.types.is_string(dtype):
        if unit is not None:
            raise SourceFileError(f"{where}: holds text; a unit is for numbers: declare the text's `format`, or "
                                  f"leave it out for ISO 8601 ({ISO_EXAMPLE})")
        return _parse_times(batch, column, values, format)
    raise SourceFileError(f"{where}: expected times (numbers with a unit, text, or timestamps), found {dtype}")


def _parse_times(batch: FileBatch, column: str, values: pa.ChunkedArray, format: str | None) -> pa.ChunkedArray:
    if format is not None:
        parsed = pc.strptime(values, format=format, unit="us", error_is_null=True)
        bad = pc.and_(pc.is_null(parsed), pc.is_valid(values))
        if pc.any(bad).as_py():
            raise SourceFileError(f"{_where(batch, column)}: expected a time in the format {format!r}, found "
                                  f"{values[_first(bad)].as_py()!r} in {_rows(batch, bad)}")
        if parsed.type.tz is None:
            parsed = pc.assume_timezone(parsed, "UTC")
        return parsed.cast(TIMESTAMP_TYPE)
    # ISO 8601: with a zone (Z, +02:00) or without (read as UTC); one column holds one of the two.
    for target in (pa.timestamp("us"), TIMESTAMP_TYPE):
        try:
            parsed = values.cast(target)
        except pa.ArrowInvalid:
            continue
        return (pc.assume_timezone(parsed, "UTC") if target.tz is None else parsed).cast(TIMESTAMP_TYPE)
    flat = values.combine_chunks()
    target = TIMESTAMP_TYPE if _parses(flat.slice(0, 1), TIMESTAMP_TYPE) else pa.timestamp("us")
    low, high = 0, len(flat)  # the first value that does not parse: the shortest failing prefix
    while high - low > 1:
        middle = (low + high) // 2
        if _parses(flat.slice(0, middle), target):
            low = middle
        else:
            high = middle
    row = high - 1
    raise SourceFileError(f"{_where(batch, column)}: expected an ISO 8601 time such as {ISO_EXAMPLE!r} (or declare "
                          f"its `format`), found {flat[row].as_py()!r} in row {batch.first_row + row}")


def _parses(values: pa.Array, target: pa.DataType) -> bool:
    try:
        values.cast(target)
    except pa.ArrowInvalid:
        return False
    return True


def ids(batch: FileBatch, column: str, dtype: pa.DataType, role: str) -> pa.ChunkedArray:
    """A key column as `dtype`, a value in every row."""
    require_values(batch, column, f"{role} id")
    return cast(batch, column, dtype)


def separated_lists(batch: FileBatch, column: str, separator: str, value_type: pa.DataType) -> pa.Array:
    """`a|b|c` as [a, b, c]: values trimmed, empty ones dropped (an empty string is an empty list)."""
    text = batch.table.column(column).combine_chunks()
    lists = pc.split_pattern(text, pattern=separator)
    flat, parents = pc.list_flatten(lists), pc.list_parent_indices(lists)
    flat = pc.utf8_trim_whitespace(flat)
    keep = pc.not_equal(flat, "")
    values = flat.filter(keep)
    if value_type != pa.string():
        try:
            values = values.cast(value_type)
        except pa.ArrowInvalid:
            bad = pc.invert(pc.fill_null(pc.utf8_is_numeric(values), False))
            raise SourceFileError(f"{_where(batch, column)}: expected {value_type} values separated by "
                                  f"{separator!r}, found {values[_first(bad)].as_py()!r}") from None
    return _lists(values, parents.filter(keep).to_numpy(), len(text), text.is_null())


def flag_lists(batch: FileBatch, columns: Sequence[str]) -> pa.Array:
    """The names of the 0/1 columns set on each row, in the order given."""
    flags = []
    for column in columns:
        values = require_values(batch, column, "0 or 1")
        as_int = values.cast(pa.int64()) if pa.types.is_boolean(values.type) else values
        if not pa.types.is_integer(as_int.type):
            raise SourceFileError(f"{_where(batch, column)}: expected 0 or 1 (a flag), found {values.type}")
        bad = pc.invert(pc.is_in(as_int, value_set=pa.array([0, 1], as_int.type)))
        if pc.any(bad).as_py():
            raise SourceFileError(f"{_where(batch, column)}: expected 0 or 1 (a flag), found "
                                  f"{as_int[_first(bad)].as_py()!r} in {_rows(batch, bad)}")
        flags.append(as_int.to_numpy().astype(bool))
    matrix = np.column_stack(flags)
    rows, which = np.nonzero(matrix)  # row-major: each row's flags in the order given
    return _lists(pa.array(np.asarray(columns, dtype=object)[which], pa.string()), rows, matrix.shape[0], None)


def _lists(values: pa.Array, parents: np.ndarray, rows: int, nulls: pa.Array | None) -> pa.Array:
    counts = np.bincount(parents, minlength=rows) if len(parents) else np.zeros(rows, dtype=np.int64)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    lists = pa.ListArray.from_arrays(offsets, values)
    if nulls is not None and pc.any(nulls).as_py():
        lists = pc.if_else(nulls, pa.scalar(None, lists.type), lists)
    return lists


def date_parts(batch: FileBatch, column: str, format: str, part: str, dtype: pa.DataType) -> pa.ChunkedArray:
    """A part (year, month, ...) of text dates in `format`; empty dates stay empty."""
    text = batch.table.column(column)
    if not pa.types.is_string(text.type):
        raise SourceFileError(f"{_where(batch, column)}: expected dates as text (date_format {format!r}), found "
                              f"{text.type}")
    parsed = pc.strptime(text, format=format, unit="s", error_is_null=True)
    bad = pc.and_(pc.is_null(parsed), pc.is_valid(text))
    if pc.any(bad).as_py():
        raise SourceFileError(f"{_where(batch, column)}: expected a date in the format {format!r}, found "
                              f"{text[_first(bad)].as_py()!r} in {_rows(batch, bad)}")
    return _DATE_PARTS[part](parsed).cast(dtype)


def class_ids(batch: FileBatch, column: str, classes: Sequence[Any], missing_allowed: bool,
              task: str) -> pa.ChunkedArray:
    """Each value's position in `classes`."""
    values = batch.table.column(column)
    if not missing_allowed:
        require_values(batch, column, f"a class of task {task!r}", "; or declare missing_labels: true")
    ids = pc.index_in(values, value_set=pa.array(classes))
    bad = pc.and_(pc.is_null(ids), pc.is_valid(values))
    if pc.any(bad).as_py():
        raise SourceFileError(f"{_where(batch, column)} (task {task!r}): expected one of the classes "
                              f"{list(classes)}, found {values[_first(bad)].as_py()!r} in {_rows(batch, bad)}")
    return ids.cast(pa.int64())


def labels(batch: FileBatch, values: pa.ChunkedArray | pa.Array, column: str, what: str, missing_allowed: bool,
           dtype: pa.DataType) -> pa.ChunkedArray | pa.Array:
    """A label column of `dtype`; a missing label is an error unless the task allows it."""
    if not missing_allowed and values.null_count:
        raise SourceFileError(f"{_where(batch, column)}: {what} is missing in {_rows(batch, pc.is_null(values))} "
                              "(an empty input); fill it, or declare missing_labels: true")
    values = values.cast(dtype)
    if pa.types.is_floating(dtype):
        bad = pc.invert(pc.is_finite(values))
        if pc.any(bad).as_py():
            raise SourceFileError(f"{_where(batch, column)}: {what} must be a finite number, found "
                                  f"{values[_first(bad)].as_py()!r} in {_rows(batch, bad)}")
    return values
