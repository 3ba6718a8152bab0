"""Checks a table against the schema of the view it is ingested into.

Wrong types fail with the column, the expected and the found type. Only conversions that keep
every value are applied silently: narrower integers to wider ones (overflow fails), integers to
floats, float32 to float64, large/dictionary strings to strings, and timestamps of any unit or
zone to UTC microseconds (naive timestamps are read as UTC; sub-microsecond digits are dropped).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.errors import IngestionError, SchemaError


def _convertible(found: pa.DataType, expected: pa.DataType) -> bool:
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
        return (pa.types.is_list(found) or pa.types.is_large_list(found)) and _convertible(
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


def _first_null_row(column: pa.ChunkedArray) -> int:
    return int(np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))[0])


def conform_table(table: pa.Table, schema: pa.Schema, view_name: str,
                  timestamp_field: str) -> pa.Table:
    """Returns `table` with exactly `schema`'s columns, order and types, or raises.

    Raises SchemaError for missing or extra columns and wrong types, IngestionError for an empty
    table, null values in non-nullable columns (keys, labels) and missing timestamps.
    """
    where = f"view {view_name!r}"
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
        if not _convertible(column.type, field.type):
            raise SchemaError(f"{column_where}: expected type {field.type}, found {column.type}")
        column = _convert(column, field.type, column_where)
        if not field.nullable and column.null_count:
            what = "missing timestamps" if field.name == timestamp_field else "null values"
            raise IngestionError(f"{column_where}: {column.null_count} {what} (first at row "
                                 f"{_first_null_row(column)}); every row needs one")
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)
