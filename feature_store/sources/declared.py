"""A dataset declared in a YAML file (feature_store/declaration.py), as a data source: the same
`prepare_dataset` path as the built-in sources reads it, so it gets the same point-in-time joins,
transforms, splits and atomic publish.

Opening the source checks everything the files can tell before a row is read: every file exists and
holds every declared column, with a type that fits its role; every task condition names columns of
the events file, of fitting types. Rows then stream: the events in record batches, one file after
another (never the whole table in memory); the users and items tables whole (a static one is checked
for repeated keys). Values are checked as they pass (times that do not parse, missing ids, labels),
naming the file, the column and the row. Events whose user or item has no feature row are kept
(their features are empty) and counted in the summary (`report`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.declaration import (
    BinaryTask,
    Csv,
    DatasetDeclaration,
    DeclarationError,
    Events,
    Feature,
    FeatureTable,
    ImplicitTask,
    MulticlassTask,
    RegressionTask,
    load_declaration,
)
from feature_store.definitions import (
    DatasetDefinition,
    Entity,
    FeatureKind,
    FeatureView,
    SequenceFeature,
    Task,
    TaskKind,
    TextFeature,
    dtype_from_str,
    is_id_type,
)
from feature_store.definitions import Feature as FeatureDefinition
from feature_store.errors import FeatureStoreError, SourceFileError
from feature_store.expressions import Expression, ExpressionError, nearest, parse_expression
from feature_store.options import SourceOptions
from feature_store.sources import conversions
from feature_store.sources.base import DataSource, static_feature_times
from feature_store.sources.files import CsvFormat, FileBatch, FileSet, find_files, normalized_type

DEFAULT_TEXT_LENGTH = 32
# Rows per record batch read from the events files (and per chunk ingested).
EVENT_BATCH_ROWS = 262_144


def open_declared(path: str | Path, options: SourceOptions | None = None) -> DeclaredSource:
    """The source a declaration file describes; relative paths in it are read from
    `options.data_dir`, else from the file's folder."""
    path = Path(path)
    options = options or SourceOptions()
    declaration = load_declaration(path)
    try:
        return DeclaredSource(declaration, options, str(path), options.data_dir or path.parent)
    except DeclarationError:
        raise
    except FeatureStoreError as err:  # a file that does not fit: name the declaration too
        raise type(err)(f"{path}: {err}") from None


def _canonical(dtype: pa.DataType) -> pa.DataType:
    """int64 for every integer type, float64 for every float, else the (normalized) type."""
    dtype = normalized_type(dtype)
    if pa.types.is_integer(dtype):
        return pa.int64()
    return pa.float64() if pa.types.is_floating(dtype) else dtype


def _is_number(dtype: pa.DataType) -> bool:
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype)


def _declared(type_name: str | None) -> pa.DataType | None:
    return None if type_name is None else dtype_from_str(type_name)


class _Table:
    """One declared table: its files, the columns it reads (`want`), then (`check`) their types."""

    def __init__(self, role: str, declared: Events | FeatureTable, base_dir: Path) -> None:
        self.role = role
        csv = declared.csv or Csv()
        try:
            self.files: FileSet = find_files(declared.path, base_dir, declared.format, CsvFormat(
                delimiter=csv.delimiter, column_names=None if csv.header else tuple(csv.columns or ()),
                encoding=csv.encoding, null_values=tuple(csv.null_values),
                quote_char=False if csv.quote is None else csv.quote, newlines_in_values=csv.newlines_in_values))
        except SourceFileError as err:
            raise SourceFileError(f"{role}.path: {err}") from None
        self.first_file = self.files.display(self.files.paths[0])
        self.wanted: dict[str, tuple[pa.DataType | None, str]] = {}  # column -> (type to read, what for)
        self.schema = pa.schema([])

    def want(self, column: str, dtype: pa.DataType | None, purpose: str) -> None:
        """Reads `column` as `dtype` (None: the file's type) for `purpose`; one column, one type."""
        known, known_purpose = self.wanted.get(column, (None, purpose))
        if known is not None and dtype is not None and known != dtype:
            raise SourceFileError(f"file {self.first_file}, column {column!r}: read as {known} for {known_purpose} "
                                  f"and as {dtype} for {purpose}; a column has one type: declare the same one")
        self.wanted[column] = (known or dtype, known_purpose if known is not None else purpose)

    def want_feature(self, feature: Feature) -> None:
        for column, dtype in _read_types(feature, self.is_csv):
            self.want(column, dtype, f"feature {feature.output!r}")

    def check(self) -> None:
        self.schema = self.files.check_columns({column: dtype for column, (dtype, _) in self.wanted.items()},
                                               {column: purpose for column, (_, purpose) in self.wanted.items()})

    @property
    def is_csv(self) -> bool:
        return self.files.format == "csv"

    def type_of(self, column: str) -> pa.DataType:
        return self.schema.field(column).type

    def fail(self, column: str, message: str) -> SourceFileError:
        return SourceFileError(f"file {self.first_file}, column {column!r}: {message}")


def _read_types(feature: Feature, csv: bool) -> list[tuple[str, pa.DataType | None]]:
    """The file columns a feature reads, with the type to read them as (None: the file's)."""
    declared = _declared(feature.type)
    if feature.flags is not None:
        return [(flag, pa.int64() if csv else None) for flag in feature.flags]
    column = feature.column or ""
    if feature.separator is not None or feature.date_part is not None or feature.kind == "text":
        return [(column, pa.string())]
    if feature.kind == "multi_hot":
        return [(column, None if declared is None else pa.list_(declared))]
    default = {"categorical": pa.string(), "numeric": pa.float64()}[feature.kind] if csv else None
    return [(column, declared or default)]


class DeclaredSource(DataSource):
    """`declaration` read from `base_dir` (relative paths); `where` names the declaration in errors."""

    def __init__(self, declaration: DatasetDeclaration, options: SourceOptions, where: str,
                 base_dir: Path) -> None:
        super().__init__(declaration.name, options)
        self.declaration = declaration
        self.where = where
        self._expressions = {t.name: parse_expression(t.positive) for t in declaration.tasks
                             if isinstance(t, BinaryTask)}
        self._events = self._open_events(base_dir)
        self._tables = {role: self._open_feature_table(role, table, base_dir)
                        for role, table in (("users", declaration.users), ("items", declaration.items))
                        if table is not None}
        self._definition = self._build_definition()
        self._unknown: dict[str, _UnknownKeys] = {}  # per feature table, filled as its rows are read

    # ---- opening: every check the files allow before a row is read ----------------------------------
    def _open_events(self, base_dir: Path) -> _Table:
        events = self.declaration.events
        table = _Table("events", events, base_dir)
        self._check_task_columns(table)
        for key, role in ((events.user, "user"), (events.item, "item")):
            table.want(key.column, _declared(key.type) or (pa.string() if table.is_csv else None), f"the {role} id")
        table.want(events.time.column, pa.string() if events.time.format else None, "the time")
        for feature in events.features:
            table.want_feature(feature)
        for task in self.declaration.tasks:
            for column in self._task_columns(task):
                text_classes = isinstance(task, MulticlassTask) and isinstance(task.classes[0], str)
                table.want(column, pa.string() if text_classes and table.is_csv else None, f"task {task.name!r}")
        table.check()
        return table

    def _open_feature_table(self, role: str, declared: FeatureTable, base_dir: Path) -> _Table:
        table = _Table(role, declared, base_dir)
        entity_key = self.declaration.events.user if role == "users" else self.declaration.events.item
        # A CSV file's keys are read as the events' ids are (text holds either type).
        events_type = _canonical(self._events.type_of(entity_key.column))
        table.want(declared.key, _declared(entity_key.type) or (events_type if table.is_csv else None), "the key")
        if declared.time is not None:
            table.want(declared.time.column, pa.string() if declared.time.format else None, "the time")
        for feature in declared.features:
            table.want_feature(feature)
        table.check()
        return table

    def _task_columns(self, task: Any) -> list[str]:
        if isinstance(task, BinaryTask):
            return self._expressions[task.name].columns
        return [task.column] if isinstance(task, RegressionTask | MulticlassTask) else []

    def _check_task_columns(self, table: _Table) -> None:
        """Every column a task reads is in the events file (else the nearest one is named)."""
        _, found = next(table.files.columns())
        for index, task in enumerate(self.declaration.tasks):
            for column in self._task_columns(task):
                if column not in found.names:
                    what = (f"condition {task.positive!r}" if isinstance(task, BinaryTask) else "column")
                    raise DeclarationError(
                        f"{self.where}: tasks[{index}] ({task.name!r}): the {what} names column {column!r}, which "
                        f"file {table.first_file} does not hold{nearest(column, found.names)} "
                        f"(its columns: {found.names})")

    def _entity(self, name: str, role: str) -> Entity:
        events = self.declaration.events
        key = events.user if role == "user" else events.item
        dtype = _canonical(self._events.type_of(key.column))
        if not is_id_type(dtype):
            raise self._events.fail(key.column, f"expected {role} ids (integers or strings), found {dtype}")
        return Entity(name, key.output, dtype, key.feature)

    def _feature_definition(self, table: _Table, feature: Feature) -> FeatureDefinition | TextFeature:
        name = feature.output
        if feature.kind == "text":
            if not pa.types.is_string(table.type_of(feature.column or "")):
                raise table.fail(feature.column or "", f"expected text (strings) for text feature {name!r}, found "
                                                       f"{table.type_of(feature.column or '')}")
            return TextFeature(name, feature.max_length or DEFAULT_TEXT_LENGTH)
        kind = FeatureKind(feature.kind)
        declared = _declared(feature.type)
        if feature.flags is not None:
            return FeatureDefinition(name, kind, pa.list_(pa.string()))
        column = feature.column or ""
        found = table.type_of(column)
        if feature.date_part is not None:
            return FeatureDefinition(name, kind, declared or pa.int64())
        if feature.separator is not None:
            return FeatureDefinition(name, kind, pa.list_(declared or pa.string()))
        if kind is FeatureKind.MULTI_HOT:
            if not pa.types.is_list(found):
                remedy = ("; a CSV file holds no lists: declare the `separator` between the values"
                          if table.is_csv else "; declare `separator` for values in one string, or `flags`")
                raise table.fail(column, f"expected a list column for multi_hot feature {name!r}, found {found}"
                                         f"{remedy}")
            values = declared or _canonical(found.value_type)
            if not is_id_type(values):
                raise table.fail(column, f"expected a list of integers or strings for multi_hot feature {name!r}, "
                                         f"found {found}")
            return FeatureDefinition(name, kind, pa.list_(values))
        dtype = declared or _canonical(found)
        fits = is_id_type(dtype) if kind is FeatureKind.CATEGORICAL else _is_number(dtype)
        if not fits or (kind is FeatureKind.NUMERIC and not _is_number(found)):
            expected = "integers or strings" if kind is FeatureKind.CATEGORICAL else "numbers"
            raise table.fail(column, f"expected {expected} for {kind} feature {name!r}, found {found}")
        return FeatureDefinition(name, kind, dtype)

    def _task(self, task: Any) -> Task:
        common = {"role": task.role, "descriptors": task.descriptors}
        if isinstance(task, ImplicitTask):
            return Task(task.name, TaskKind.BINARY, implicit=True, **common)
        if isinstance(task, BinaryTask):
            try:
                self._expressions[task.name].check(self._events.schema)
            except ExpressionError as err:
                raise SourceFileError(f"file {self._events.first_file}: task {task.name!r}: the condition {err}") from None
            return Task(task.name, TaskKind.BINARY, missing_labels=task.missing_labels, **common)
        found = self._events.type_of(task.column)
        if isinstance(task, RegressionTask):
            if not _is_number(found):
                raise self._events.fail(task.column, f"expected numbers for regression task {task.name!r}, "
                                                     f"found {found}")
            return Task(task.name, TaskKind.REGRESSION, missing_labels=task.missing_labels, **common)
        text_classes = isinstance(task.classes[0], str)
        if not (pa.types.is_string(found) if text_classes else pa.types.is_integer(found)):
            raise self._events.fail(task.column, f"expected {'strings' if text_classes else 'integers'} (the classes "
                                                 f"of task {task.name!r} are {task.classes}), found {found}")
        return Task(task.name, TaskKind.MULTICLASS, num_classes=len(task.classes),
                    missing_labels=task.missing_labels, **common)

    def _build_definition(self) -> DatasetDefinition:
        declaration = self.declaration
        user, item = self._entity("user", "user"), self._entity("item", "item")
        views = []
        for role, table in self._tables.items():
            declared = declaration.users if role == "users" else declaration.items
            assert declared is not None
            entity = user if role == "users" else item
            key_type = _canonical(table.type_of(declared.key))
            if key_type != entity.dtype:
                raise table.fail(declared.key, f"expected {entity.dtype} keys, as the events' {entity.name} ids "
                                               f"({self._events.first_file}), found {table.type_of(declared.key)}")
            features = tuple(self._feature_definition(table, f) for f in declared.features)
            views.append(FeatureView(declared.name or role, entity, features, ttl=declared.ttl_delta))
        try:
            return DatasetDefinition(
                name=declaration.name, user=user, item=item,
                tasks=tuple(self._task(t) for t in declaration.tasks),
                feature_views=tuple(views),
                context_features=tuple(self._feature_definition(self._events, f)
                                       for f in declaration.events.features),
                sequences=tuple(SequenceFeature(s.name, s.column, s.length or self.options.sequence_length,
                                                s.vocabulary or s.column) for s in declaration.sequences),
            )
        except FeatureStoreError:
            raise
        except ValueError as err:
            raise DeclarationError(f"{self.where}: {err}") from None

    # ---- DataSource ------------------------------------------------------------------------------------
    def definition(self) -> DatasetDefinition:
        return self._definition

    def origin(self, view_name: str) -> str:
        """The declaration: the errors of a view's rows name their file themselves."""
        return self.where

    def estimated_events(self) -> int:
        estimate = self._events.files.estimated_rows()
        return self.events_kept(estimate)

    def tables(self) -> Iterator[tuple[str, Iterator[pa.Table]]]:
        for (role, table), view in zip(self._tables.items(), self._definition.feature_views, strict=True):
            try:
                rows = self._feature_rows(table, view)
            except FeatureStoreError as err:
                raise type(err)(f"{self.where}: {err}") from None
            self._unknown[role] = _UnknownKeys(pc.unique(rows.column(view.key_field)))
            yield view.name, iter([rows])
        yield self._definition.events_name, self._event_chunks()

    def report(self) -> dict[str, Any]:
        """Events kept although their user or item has no feature row (their features are empty)."""
        return {f"events_without_{role[:-1]}_features": counter.rows() for role, counter in self._unknown.items()}

    def check_splits(self, splits: dict[str, Any]) -> None:
        """A binary task whose condition gives no positive (or only positives) in a split cannot be
        learned or measured there: the declaration is wrong, or the data lacks the events."""
        for task in self.declaration.tasks:
            if not isinstance(task, BinaryTask):
                continue
            for split, entry in splits.items():
                rate = entry["tasks"][task.name].get("positive_rate")
                if entry["rows"] and rate in (0.0, 1.0):
                    found = "no positive" if rate == 0.0 else "only positives"
                    raise SourceFileError(
                        f"{self.where}: task {task.name!r}: the condition {task.positive!r} over file(s) "
                        f"{self._events.files.location} gives {found} in the {split} split ({entry['rows']} events); "
                        "expected both classes in every split: check the condition and the split fractions")

    # ---- rows --------------------------------------------------------------------------------------------
    def _feature_values(self, batch: FileBatch, feature: Feature, dtype: pa.DataType):
        if feature.flags is not None:
            return conversions.flag_lists(batch, feature.flags)
        column = feature.column or ""
        if feature.separator is not None:
            return conversions.separated_lists(batch, column, feature.separator, dtype.value_type)
        if feature.date_part is not None and feature.date_format is not None:
            return conversions.date_parts(batch, column, feature.date_format, feature.date_part, dtype)
        return conversions.cast(batch, column, dtype)

    def _feature_rows(self, table: _Table, view: FeatureView) -> pa.Table:
        declared = self.declaration.users if table.role == "users" else self.declaration.items
        assert declared is not None
        parts, segments = [], []
        for batch in table.files.scan(table.schema):
            n = batch.table.num_rows
            columns = {view.key_field: conversions.ids(batch, declared.key, view.entity.dtype, f"a {view.entity.name}"),
                       view.timestamp_field: (
                           conversions.timestamps(batch, declared.time.column, declared.time.unit, declared.time.format)
                           if declared.time is not None else
                           static_feature_times(n))}
            for feature, definition in zip(declared.features, view.features, strict=True):
                columns[definition.name] = self._feature_values(batch, feature, definition.dtype)
            parts.append(pa.Table.from_arrays([columns[name] for name in view.schema.names], schema=view.schema))
            segments.append((batch.file, batch.first_row, n))
        rows = pa.concat_tables(parts)
        if declared.time is None:
            rows = _one_row_per_key(rows, view.key_field, declared.key, declared.duplicate_keys, segments)
        return rows

    def _label(self, batch: FileBatch, declared: Any, task: Task):
        n = batch.table.num_rows
        if isinstance(declared, ImplicitTask):
            return pa.array(np.ones(n, dtype=np.int64))
        if isinstance(declared, MulticlassTask):
            return conversions.class_ids(batch, declared.column, declared.classes, declared.missing_labels,
                                         declared.name)
        if isinstance(declared, RegressionTask):
            return conversions.labels(batch, batch.table.column(declared.column), declared.column,
                                      f"the target of task {declared.name!r}", declared.missing_labels, pa.float64())
        expression: Expression = self._expressions[declared.name]
        values = expression.evaluate(batch.table)
        if isinstance(values, pa.Scalar):  # a condition on constants alone cannot be declared; kept for safety
            values = pa.array([values.as_py()] * n, pa.bool_())
        column = _null_input(batch.table, expression, values)
        return conversions.labels(batch, values, column, f"the condition {declared.positive!r} of task "
                                  f"{declared.name!r}", declared.missing_labels, pa.int64())

    def _event_rows(self, batch: FileBatch) -> pa.Table:
        """One file batch of events as the events view's rows."""
        events, definition = self.declaration.events, self._definition
        columns: dict[str, Any] = {
            definition.user.join_key: conversions.ids(batch, events.user.column, definition.user.dtype, "a user"),
            definition.item.join_key: conversions.ids(batch, events.item.column, definition.item.dtype, "an item"),
            definition.timestamp_field: conversions.timestamps(batch, events.time.column, events.time.unit,
                                                               events.time.format),
        }
        for feature, context in zip(events.features, definition.context_features, strict=True):
            columns[context.name] = self._feature_values(batch, feature, context.dtype)
        for declared, task in zip(self.declaration.tasks, definition.tasks, strict=True):
            columns[task.label] = self._label(batch, declared, task)
        view = definition.event_view
        return pa.Table.from_arrays([columns[name] for name in view.schema.names], schema=view.schema)

    def _event_chunks(self) -> Iterator[pa.Table]:
        """The events in chunks of about EVENT_BATCH_ROWS rows (small files' batches joined: each
        chunk costs the store a write per bucket), the first `max_events` if set."""
        definition = self._definition
        keys = {role: definition.user.join_key if role == "users" else definition.item.join_key
                for role in self._tables}
        left = self.options.max_events
        pending: list[pa.Table] = []

        def chunk() -> pa.Table:
            rows = pa.concat_tables(pending)
            pending.clear()
            for role, counter in self._unknown.items():
                counter.add(rows.column(keys[role]))
            return rows

        for batch in self._events.files.scan(self._events.schema, EVENT_BATCH_ROWS):
            if left is not None:
                if left <= 0:
                    break
                if batch.table.num_rows > left:
                    batch = FileBatch(batch.file, batch.first_row, batch.table.slice(0, left))
                left -= batch.table.num_rows
            pending.append(self._event_rows(batch))
            if sum(t.num_rows for t in pending) >= EVENT_BATCH_ROWS:
                yield chunk()
        if pending:
            yield chunk()


class _UnknownKeys:
    """Counts rows whose key is not one of `known` (events without a feature row). Each chunk adds
    its keys' counts; the known keys are looked up once at the end, since a lookup table of a
    million keys costs more to build than a chunk's whole count."""

    def __init__(self, known: pa.Array) -> None:
        self.known = known
        self.counts: list[pa.Table] = []

    def add(self, keys: pa.ChunkedArray) -> None:
        counts = pc.value_counts(keys.combine_chunks())
        self.counts.append(pa.table({"key": counts.field("values"), "rows": counts.field("counts")}))
        if len(self.counts) >= 16:  # merged now and then: memory follows the distinct keys, not the chunks
            self.counts = [self._merged()]

    def _merged(self) -> pa.Table:
        return pa.concat_tables(self.counts).group_by("key").aggregate([("rows", "sum")]).rename_columns(
            ["key", "rows"])

    def rows(self) -> int:
        if not self.counts:
            return 0
        merged = self._merged()
        unknown = pc.invert(pc.is_in(merged.column("key"), value_set=self.known))
        return int(pc.sum(merged.column("rows").filter(unknown)).as_py() or 0)


def _null_input(table: pa.Table, expression: Expression, values) -> str:
    """The column whose empty value leaves a condition open at its first missing row."""
    if not values.null_count:
        return expression.columns[0]
    row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
    return next((c for c in expression.columns if not table.column(c)[row].is_valid), expression.columns[0])


def _one_row_per_key(rows: pa.Table, key: str, column: str, keep: str,
                     segments: list[tuple[str, int, int]]) -> pa.Table:
    """A static table: one row per key. Repeated keys are an error naming the key and its rows, or
    (`keep` first / last) the first or last row of each key is kept."""
    keys = rows.column(key)
    codes = pc.index_in(keys, value_set=pc.unique(keys)).to_numpy()
    order = np.arange(len(codes)) if keep != "last" else np.arange(len(codes))[::-1]
    _, firsts = np.unique(codes[order], return_index=True)
    if len(firsts) == len(codes):
        return rows
    if keep != "error":
        return rows.take(np.sort(order[firsts]))
    counts = np.bincount(codes)
    repeated = int(np.flatnonzero(counts[codes] > 1)[0])
    at = [_file_row(int(i), segments) for i in np.flatnonzero(codes == codes[repeated])[:3]]
    files = sorted({file for file, _ in at})
    raise SourceFileError(
        f"file {', '.join(files)}, column {column!r}: key {keys[repeated].as_py()!r} appears in "
        f"{int(counts[codes[repeated]])} rows (rows {', '.join(str(row) for _, row in at)}); a static feature table "
        f"holds one row per key ({_count((counts > 1).sum(), 'key repeats', 'keys repeat')}): remove the repeats, "
        "declare the rows' `time`, or declare duplicate_keys: first (or last)")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _file_row(index: int, segments: list[tuple[str, int, int]]) -> tuple[str, int]:
    """The file and row of the index-th row of tables read segment by segment."""
    for file, first_row, count in segments:
        if index < count:
            return file, first_row + index
        index -= count
    raise IndexError(index)
