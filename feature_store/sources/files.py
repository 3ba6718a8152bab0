"""Source files read with declared columns: every column is read as the type the source declares
(never inferred), and every problem names the file, the column, what was expected and what was found.

A declaration is a `pyarrow.Schema`; a non-nullable field must have a value in every row.

Two ways in: `read_csv` / `read_parquet` read one local file whole (the built-in sources' small
files); `find_files` + `FileSet.scan` stream a file, a glob or a partitioned directory, local or on
object storage, in record batches through pyarrow.dataset, one file after another (declared
datasets, whose events may not fit in memory).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from feature_store.errors import SourceFileError
from feature_store.expressions import nearest
from feature_store.object_store import filesystem, is_uri
from feature_store.validation import convertible

# pyarrow's own messages, which name neither the file nor (for conversions) the column.
_CONVERSION = re.compile(r"In CSV column #(?P<index>\d+): (?:Row #(?P<line>\d+): )?.*CSV conversion error to "
                         r"(?P<type>[^:]+): invalid value '(?P<value>.*)'", re.DOTALL)
_COLUMN_COUNT = re.compile(r"Expected (?P<expected>\d+) columns, got (?P<found>\d+): (?P<row>.*)", re.DOTALL)
_MISSING_COLUMN = re.compile(r"Column '(?P<name>.*)' in include_columns does not exist")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parquet.brotli", ".parquet.snappy", ".parquet.gzip", ".parquet.zstd")
_CSV_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")
_GLOB = re.compile(r"[*?\[]")
# A CSV file's size per row, to estimate its rows without reading it (Parquet files say how many).
CSV_BYTES_PER_ROW_GUESS = 100


@dataclass(frozen=True)
class CsvFormat:
    """How delimited text is read. `column_names`: every column of a file without a header, in
    order (None: the first row names them)."""

    delimiter: str = ","
    column_names: tuple[str, ...] | None = None
    encoding: str = "utf8"
    null_values: tuple[str, ...] = ("",)
    quote_char: str | bool = '"'
    newlines_in_values: bool = False
    skip_rows: int = 0

    @property
    def header(self) -> bool:
        return self.column_names is None

    def options(self, types: Mapping[str, pa.DataType],
                include: Sequence[str] | None = None) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions,
                                                               pacsv.ConvertOptions]:
        """pyarrow's read, parse and convert options: `types` fixes the columns' types (others are
        inferred); `include` keeps only those columns (None: every column)."""
        read = pacsv.ReadOptions(encoding=self.encoding, skip_rows=self.skip_rows,
                                 column_names=None if self.column_names is None else list(self.column_names))
        parse = pacsv.ParseOptions(delimiter=self.delimiter, quote_char=self.quote_char,
                                   newlines_in_values=self.newlines_in_values)
        convert = pacsv.ConvertOptions(column_types=dict(types), include_columns=list(include or []),
                                       null_values=list(self.null_values), strings_can_be_null=True,
                                       quoted_strings_can_be_null=False)
        return read, parse, convert


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
    csv = CsvFormat(delimiter=delimiter, column_names=None if header else tuple(names), encoding=encoding,
                    null_values=tuple(null_values), quote_char=quote_char, newlines_in_values=newlines_in_values,
                    skip_rows=skip_rows)
    read_options, parse_options, convert_options = csv.options({f.name: f.type for f in schema}, names)
    try:
        table = pacsv.read_csv(path, read_options=read_options, parse_options=parse_options,
                               convert_options=convert_options)
    except (pa.ArrowInvalid, pa.ArrowKeyError) as err:
        raise _csv_error(str(path), schema, str(err), csv, lambda: _header(path, csv)) from None
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
    columns = [cast_column(str(path), field, table.column(field.name)) for field in schema]
    return _require_values(path, pa.Table.from_arrays(columns, schema=schema))


def cast_column(where: str, field: pa.Field, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """`column` as `field.type`, when the conversion keeps every value (no parsing of text into
    numbers); an all-null column (a file writer's guess of "double") holds no value to lose."""
    if column.null_count < len(column) and not convertible(column.type, field.type):
        raise SourceFileError(f"file {where}, column {field.name!r}: expected {field.type}, found {column.type}")
    try:
        return column.cast(field.type, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise SourceFileError(f"file {where}, column {field.name!r}: values do not fit {field.type} "
                              f"(found {column.type})") from None


@dataclass(frozen=True)
class FileBatch:
    """Rows of one file: `first_row` is the file's row number (1: its first data row) of the first."""

    file: str
    first_row: int
    table: pa.Table


@dataclass(frozen=True)
class FileSet:
    """The files one location names (a file, a glob or a partitioned directory) on one filesystem.
    `partition_base`: the folder under which `key=value` folders are columns (None: a single file)."""

    location: str
    filesystem: pafs.FileSystem
    paths: tuple[str, ...]
    format: str  # "parquet" or "csv"
    partition_base: str | None = None
    uri_prefix: str = ""  # "s3://" for files on object storage
    csv: CsvFormat = field(default_factory=CsvFormat)

    def display(self, path: str) -> str:
        """A file as the user names it: its local path or its URI."""
        return f"{self.uri_prefix}{path}"

    def _dataset(self, types: Mapping[str, pa.DataType]) -> ds.Dataset:
        if self.format == "parquet":
            file_format: ds.FileFormat = ds.ParquetFileFormat()
        else:
            read, parse, convert = self.csv.options(types)
            file_format = ds.CsvFileFormat(read_options=read, parse_options=parse, convert_options=convert)
        return ds.dataset(list(self.paths), format=file_format, filesystem=self.filesystem,
                          partitioning="hive" if self.partition_base else None,
                          partition_base_dir=self.partition_base)

    def _partition_names(self) -> list[str]:
        """The `key` of each `key=value` folder between the partition base and the first file."""
        if self.partition_base is None:
            return []
        folders = PurePosixPath(self.paths[0]).relative_to(self.partition_base).parts[:-1]
        return [part.split("=", 1)[0] for part in folders if "=" in part]

    def _error(self, path: str, schema: pa.Schema, err: Exception) -> SourceFileError:
        where = self.display(path)
        if self.format == "csv":
            return _csv_error(where, schema, str(err), self.csv, lambda: _header(path, self.csv, self.filesystem))
        return SourceFileError(f"file {where}: cannot be read as columns {schema.names}: {err}")

    def columns(self, types: Mapping[str, pa.DataType] | None = None) -> Iterator[tuple[str, pa.Schema]]:
        """(file, its columns) for every file, partition columns included: a Parquet file's footer
        types; a CSV file's types as `types` fixes them, else as its first block suggests."""
        dataset = self._dataset(types or {})
        partitions = [dataset.schema.field(name) for name in self._partition_names()]
        for fragment in dataset.get_fragments():
            try:
                found = fragment.physical_schema
            except (pa.ArrowInvalid, OSError) as err:
                raise self._error(fragment.path, pa.schema([]), err) from None
            yield self.display(fragment.path), pa.schema([*map(_normalized_field, found), *partitions])

    def check_columns(self, wanted: Mapping[str, pa.DataType | None],
                      purposes: Mapping[str, str] | None = None) -> pa.Schema:
        """The `wanted` columns with their types: a given type must fit what every file holds, a
        missing one is the first file's. Errors name the file and the column (with what it is for,
        from `purposes`), a missing column with the nearest one the file has."""
        declared = {name: t for name, t in wanted.items() if t is not None}
        types: dict[str, pa.DataType] = dict(declared)
        for where, found in self.columns(declared if self.format == "csv" else None):
            for name in wanted:
                purpose = f" ({purposes[name]})" if purposes and name in purposes else ""
                if name not in found.names:
                    raise SourceFileError(f"file {where}: no column {name!r}{purpose}{nearest(name, found.names)} "
                                          f"(found columns {found.names})")
                found_type = found.field(name).type
                expected = types.setdefault(name, found_type)
                if self.format == "parquet" and not pa.types.is_null(found_type) and not convertible(
                        found_type, expected):
                    raise SourceFileError(f"file {where}, column {name!r}{purpose}: expected {expected}, "
                                          f"found {found_type}")
        return pa.schema([pa.field(name, types[name]) for name in wanted])

    def estimated_rows(self) -> int:
        """Rows in all files: exact for Parquet (from the footers), a guess from the size for CSV."""
        if self.format == "csv":
            size = sum(self.filesystem.get_file_info(path).size for path in self.paths)
            return max(1, size // CSV_BYTES_PER_ROW_GUESS)
        return sum(fragment.metadata.num_rows for fragment in self._dataset({}).get_fragments())

    def scan(self, schema: pa.Schema, batch_size: int = 262_144) -> Iterator[FileBatch]:
        """The `schema`'s columns of every file, in record batches of at most `batch_size` rows,
        one file after another: memory holds a few batches, never a whole file."""
        dataset = self._dataset({f.name: f.type for f in schema} if self.format == "csv" else {})
        for fragment in dataset.get_fragments():
            row = 1
            try:
                for batch in fragment.to_batches(schema=schema, columns=schema.names, batch_size=batch_size):
                    if batch.num_rows:
                        yield FileBatch(self.display(fragment.path), row, pa.Table.from_batches([batch]))
                        row += batch.num_rows
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                raise self._error(fragment.path, schema, err) from None


def find_files(location: str, base_dir: Path, format: str | None = None,
               csv: CsvFormat | None = None) -> FileSet:
    """The files at `location`: a local path (relative to `base_dir`) or an s3:// URI, naming a
    file, a glob (`events/*.parquet`, `events/day=*/*.parquet`) or a directory (every file under it;
    `key=value` folders are columns). Hidden names (`.`, `_`) are left out, as pyarrow does.
    `format` None: from the files' extensions."""
    if is_uri(location):
        fs, path = filesystem(location)
        prefix = location[:location.index("://") + 3]
    else:
        local = Path(location).expanduser()
        fs, path, prefix = pafs.LocalFileSystem(), str((local if local.is_absolute() else base_dir / local)), ""
    path = path.rstrip("/")
    parts = PurePosixPath(path).parts
    glob_at = next((i for i, part in enumerate(parts) if _GLOB.search(part)), None)
    shown = f"{prefix}{path}"
    if glob_at is not None:
        base = str(PurePosixPath(*parts[:glob_at]))
        pattern = PurePosixPath(*parts[glob_at:])
        found = [p for p in _list(fs, base, shown) if len(PurePosixPath(p).relative_to(base).parts) == len(pattern.parts)
                 and fnmatch.fnmatchcase(str(PurePosixPath(p).relative_to(base)), str(pattern))]
        if not found:
            raise SourceFileError(f"no file matches {shown}")
        partition_base: str | None = base
    else:
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise SourceFileError(f"file {shown} does not exist")
        if info.type == pafs.FileType.File:
            found, partition_base = [path], None
        else:
            found, partition_base = _list(fs, path, shown), path
            if not found:
                raise SourceFileError(f"directory {shown} holds no files")
    if format is None:
        formats = {_format_of(p) for p in found} - {None}
        if len(formats) != 1:
            raise SourceFileError(f"cannot tell the format of {shown} from its files' names "
                                  f"({', '.join(PurePosixPath(p).name for p in found[:3])}); declare "
                                  "format: parquet or format: csv")
        format = formats.pop()
        if partition_base is not None:
            found = [p for p in found if _format_of(p) == format]
    return FileSet(shown, fs, tuple(sorted(found)), format, partition_base, prefix, csv or CsvFormat())


def _list(fs: pafs.FileSystem, base: str, shown: str) -> list[str]:
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError as err:
        raise SourceFileError(f"cannot list {shown}: {err}") from None
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and not any(
        part.startswith((".", "_")) for part in PurePosixPath(i.path).relative_to(base).parts))


def _format_of(path: str) -> str | None:
    name = PurePosixPath(path).name.lower()
    if name.endswith(_PARQUET_SUFFIXES):
        return "parquet"
    return "csv" if name.endswith(_CSV_SUFFIXES) else None


def normalized_type(dtype: pa.DataType) -> pa.DataType:
    """The type grec keeps for a file's type: large and dictionary-encoded strings as strings,
    large lists as lists."""
    if pa.types.is_large_string(dtype) or (pa.types.is_dictionary(dtype) and pa.types.is_string(dtype.value_type)):
        return pa.string()
    if pa.types.is_large_list(dtype) or pa.types.is_list(dtype):
        return pa.list_(normalized_type(dtype.value_type))
    return dtype


def _normalized_field(found: pa.Field) -> pa.Field:
    return pa.field(found.name, normalized_type(found.type))


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


def _csv_error(where: str, schema: pa.Schema, message: str, csv: CsvFormat, header_of) -> SourceFileError:
    """pyarrow's CSV message as the file, the column, the expected and the found; `header_of()`
    gives the file's column names (read only to explain an error)."""
    names = list(schema.names)
    if "Empty CSV file" in message:
        return SourceFileError(f"file {where} is empty; expected rows of columns {names}")
    if match := _COLUMN_COUNT.search(message):
        separated = {"\t": "tab", ",": "comma", "|": "pipe"}.get(csv.delimiter, repr(csv.delimiter))
        return SourceFileError(
            f"file {where}: expected {match['expected']} {separated}-separated columns"
            f"{'' if csv.header else f' {list(csv.column_names or names)}'}, found {match['found']} in the row "
            f"{match['row'].strip()!r}")
    if match := _MISSING_COLUMN.search(message):
        return SourceFileError(f"file {where}: no column {match['name']!r}; expected columns {names}, "
                               f"found {header_of()}")
    if match := _CONVERSION.search(message):
        # With a header the index counts every column of the file; without one the declared (or named).
        index = int(match["index"])
        column = header_of()[index] if csv.header else list(csv.column_names or names)[index]
        expected = schema.field(column).type if column in names else match["type"]
        line = f" (line {match['line']})" if match["line"] else ""
        return SourceFileError(f"file {where}, column {column!r}: expected {expected}, found {match['value']!r}{line}")
    return SourceFileError(f"file {where}: cannot be read as columns {names}: {message}")


def _header(path: Path | str, csv: CsvFormat, filesystem: pafs.FileSystem | None = None) -> list[str]:
    """The column names of a file's first row (only to explain an error)."""
    parse = pacsv.ParseOptions(delimiter=csv.delimiter, quote_char=csv.quote_char)
    read = pacsv.ReadOptions(encoding=csv.encoding, skip_rows=csv.skip_rows)
    with (filesystem or pafs.LocalFileSystem()).open_input_stream(str(path)) as stream:
        reader = pacsv.open_csv(stream, read_options=read, parse_options=parse,
                                convert_options=pacsv.ConvertOptions(column_types={}))
        return reader.schema.names
