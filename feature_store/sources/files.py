"""Source files read with declared columns: every column is read as the type the source declares
(never inferred), and every problem names the file, the column, what was expected and what was found.

A declaration is a `pyarrow.Schema`; a non-nullable field must have a value in every row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from feature_store.errors import SourceFileError
from feature_store.validation import convertible

# pyarrow's own messages, which name neither the file nor (for conversions) the column.
_CONVERSION = re.compile(r"In CSV column #(?P<index>\d+): .*CSV conversion error to (?P<type>[^:]+): "
                         r"invalid value '(?P<value>.*)'", re.DOTALL)
_COLUMN_COUNT = re.compile(r"Expected (?P<expected>\d+) columns, got (?P<found>\d+): (?P<row>.*)", re.DOTALL)
_MISSING_COLUMN = re.compile(r"Column '(?P<name>.*)' in include_columns does not exist")


def read_csv(path: Path, schema: pa.Schema, *, header: bool, delimiter: str = ",", encoding: str = "utf8",
             skip_rows: int = 0, null_values: Sequence[str] = ("",), quote_char: str | bool = '"',
             newlines_in_values: bool = False, trim_strings: bool = False) -> pa.Table:
    """The declared columns of a delimited text file, in the declared order and types.

    `header=True`: the file's first row names its columns, and columns not declared are skipped;
    `header=False`: the file holds exactly the declared columns, in order. Fields equal to one of
    `null_values` are missing. `trim_strings`: strings lose surrounding whitespace, as numbers do in
    the parser, and are missing when the trimmed text is one of `null_values`.
    """
    names = list(schema.names)
    read_options = pacsv.ReadOptions(encoding=encoding, skip_rows=skip_rows,
                                     column_names=None if header else names)
    parse_options = pacsv.ParseOptions(delimiter=delimiter, quote_char=quote_char,
                                       newlines_in_values=newlines_in_values)
    convert_options = pacsv.ConvertOptions(
        column_types={f.name: f.type for f in schema}, include_columns=names, null_values=list(null_values),
        strings_can_be_null=True, quoted_strings_can_be_null=False)
    try:
        table = pacsv.read_csv(path, read_options=read_options, parse_options=parse_options,
                               convert_options=convert_options)
    except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
        raise _csv_error(path, schema, str(err), header, delimiter) from None
    columns = []
    for field in schema:
        column = table.column(field.name)
        if trim_strings and pa.types.is_string(field.type):
            column = pc.utf8_trim_whitespace(column)
            column = pc.if_else(pc.is_in(column, value_set=pa.array(list(null_values), pa.string())),
                                pa.scalar(None, pa.string()), column)
        columns.append(column)
    return _require_values(path, pa.Table.from_arrays(columns, schema=schema))


def read_parquet(path: Path, schema: pa.Schema) -> pa.Table:
    """The declared columns of a Parquet file, cast to the declared types where no value changes."""
    found = pq.read_schema(path)
    missing = [n for n in schema.names if n not in found.names]
    if missing:
        raise SourceFileError(f"file {path}: no column {missing[0]!r}; expected columns {schema.names}, "
                              f"found {found.names}")
    table = pq.read_table(path, columns=list(schema.names))
    columns = []
    for field in schema:
        column = table.column(field.name)
        # Only conversions that keep every value (no parsing of text into numbers); an all-null
        # column (a file writer's guess of "double") holds no value to lose.
        if column.null_count < len(column) and not convertible(column.type, field.type):
            raise SourceFileError(f"file {path}, column {field.name!r}: expected {field.type}, "
                                  f"found {column.type}")
        try:
            columns.append(column.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise SourceFileError(f"file {path}, column {field.name!r}: values do not fit {field.type} "
                                  f"(found {column.type})") from None
    return _require_values(path, pa.Table.from_arrays(columns, schema=schema))


def _require_values(path: Path, table: pa.Table) -> pa.Table:
    if table.num_rows == 0:
        raise SourceFileError(f"file {path} has no rows; expected rows of columns {table.schema.names}")
    for field in table.schema:
        column = table.column(field.name)
        if not field.nullable and column.null_count:
            row = int(np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))[0])
            raise SourceFileError(f"file {path}, column {field.name!r}: expected a {field.type} value in every "
                                  f"row, found an empty value in row {row + 1} ({column.null_count} rows in all)")
    return table


def _csv_error(path: Path, schema: pa.Schema, message: str, header: bool, delimiter: str) -> SourceFileError:
    names = list(schema.names)
    if "Empty CSV file" in message:
        return SourceFileError(f"file {path} is empty; expected rows of columns {names}")
    if match := _COLUMN_COUNT.search(message):
        separated = {"\t": "tab", ",": "comma", "|": "pipe"}.get(delimiter, repr(delimiter))
        return SourceFileError(
            f"file {path}: expected {match['expected']} {separated}-separated columns"
            f"{'' if header else f' {names}'}, found {match['found']} in the row {match['row'].strip()!r}")
    if match := _MISSING_COLUMN.search(message):
        return SourceFileError(f"file {path}: no column {match['name']!r}; expected columns {names}, "
                               f"found {_header(path, delimiter)}")
    if match := _CONVERSION.search(message):
        # With a header the index counts every column of the file; without one only the declared.
        column = _header(path, delimiter)[int(match["index"])] if header else names[int(match["index"])]
        return SourceFileError(f"file {path}, column {column!r}: expected {schema.field(column).type}, "
                               f"found {match['value']!r}")
    return SourceFileError(f"file {path}: cannot be read as columns {names}: {message}")


def _header(path: Path, delimiter: str) -> list[str]:
    """The column names of a file's first row (only to explain an error)."""
    reader = pacsv.open_csv(path, parse_options=pacsv.ParseOptions(delimiter=delimiter),
                            convert_options=pacsv.ConvertOptions(column_types={}))
    return reader.schema.names
