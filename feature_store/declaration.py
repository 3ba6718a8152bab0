"""A dataset declared in one YAML file: a team's events, users and items (Parquet or CSV files,
local or on object storage), the role of each column, the behavior sequences and the tasks, with no
code. The reference with an example of every kind of column and task is docs/DATA.md; the JSON
schema (for editors and checks) is docs/dataset_declaration.schema.json, generated from these models
(`grec data declaration-schema`).

`load_declaration(path)` validates the file once: every problem is reported as `FILE: KEY.PATH:
problem`, an unknown key with the nearest valid one. The files themselves are checked when the
declaration is opened as a source (feature_store/sources/declared.py), before anything is written.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from feature_store.errors import FeatureStoreError
from feature_store.expressions import ExpressionError, nearest, parse_expression

# Column types a declaration may name (a multi-hot feature's type is its values' type).
ScalarType = Literal["int8", "int16", "int32", "int64", "float32", "float64", "string"]
TimeUnit = Literal["s", "ms", "us", "ns"]
_DURATION_PATTERN = r"^\s*(\d+(?:\.\d+)?)\s*(s|min|h|d|w)\s*$"
_DURATION = re.compile(_DURATION_PATTERN)
_DURATION_UNITS = {"s": "seconds", "min": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class DeclarationError(FeatureStoreError):
    """A declaration file that is missing, not YAML, or not a valid declaration."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _column_shorthand(value: Any) -> Any:
    """`user: user_id` is short for `user: {column: user_id}` (so is `time: ts`)."""
    return {"column": value} if isinstance(value, str) else value


class Csv(_Model):
    """How to read delimited text files (format: csv)."""

    delimiter: str = Field(",", min_length=1, max_length=1, description="the character between fields (\"\\t\": tab)")
    header: bool = Field(True, description="the first row names the columns; false: name them in `columns`")
    columns: list[str] | None = Field(None, description="every column of a file without a header, in file order")
    encoding: str = Field("utf8", description="text encoding, e.g. latin1")
    null_values: list[str] = Field([""], description="field values that mean 'missing'")
    quote: str | None = Field('"', min_length=1, max_length=1,
                              description="the quoting character; null: fields are never quoted")
    newlines_in_values: bool = Field(False, description="quoted fields may hold line breaks")

    @model_validator(mode="after")
    def _columns_named_once(self) -> Csv:
        if not self.header and not self.columns:
            raise ValueError("a file without a header (header: false) needs `columns`: every column's name, in order")
        if self.header and self.columns:
            raise ValueError("`columns` names the columns of a file without a header; with header: true the "
                             "file's first row names them")
        return self


class Time(_Model):
    """When a row happened (events) or from when it holds (feature rows)."""

    column: str = Field(description="the column holding the time")
    unit: TimeUnit | None = Field(None, description="numbers: the unit counted since 1970-01-01 UTC")
    format: str | None = Field(None, description="text: a strptime format such as '%Y-%m-%d %H:%M:%S' "
                                                 "(default ISO 8601); times without a zone are UTC")

    @model_validator(mode="after")
    def _one_reading(self) -> Time:
        if self.unit and self.format:
            raise ValueError("give `unit` (a column of numbers) or `format` (a column of text), not both")
        return self


class Key(_Model):
    """The column holding a user's or an item's id."""

    column: str = Field(description="the column in the file")
    name: str | None = Field(None, description="its name in grec (default: the column's)")
    type: Literal["int64", "string"] | None = Field(
        None, description="id type (default: the Parquet column's; string for CSV)")
    feature: bool = Field(True, description="the id is a model input (an id embedding); false for a key that names "
                                            "a single event (every test row a new id)")

    @property
    def output(self) -> str:
        return self.name or self.column


class Feature(_Model):
    """A feature column and its kind."""

    column: str | None = Field(None, description="the column in the file")
    name: str | None = Field(None, description="the feature's name in grec (default: the column's)")
    kind: Literal["categorical", "multi_hot", "numeric", "text"]
    type: ScalarType | None = Field(None, description="values' type (default: the Parquet column's; for CSV string, "
                                                      "numeric float64)")
    separator: str | None = Field(None, min_length=1,
                                  description="multi_hot held as one string: the text between values")
    flags: list[str] | None = Field(None, min_length=1, description="multi_hot from 0/1 columns: the value is the name "
                                                                     "of every flag column set on the row")
    max_length: int | None = Field(None, ge=1, description="text: the tokens the model reads (default 32)")
    date_format: str | None = Field(None, description="numeric from a text date: its strptime format")
    date_part: Literal["year", "month", "day", "weekday", "hour"] | None = Field(
        None, description="numeric from a text date: the part it keeps")

    @model_validator(mode="after")
    def _consistent(self) -> Feature:
        if (self.column is None) == (self.flags is None):
            raise ValueError("give `column` (the file's column), or `flags` (0/1 columns of a multi_hot feature)")
        if self.flags is not None and (self.kind != "multi_hot" or not self.name):
            raise ValueError("`flags` make a multi_hot feature and need its `name`")
        only = {"separator": "multi_hot", "max_length": "text", "date_format": "numeric", "date_part": "numeric"}
        for key, kind in only.items():
            if getattr(self, key) is not None and self.kind != kind:
                raise ValueError(f"`{key}` is for {kind} features, not {self.kind}")
        if self.separator is not None and self.flags is not None:
            raise ValueError("a multi_hot feature is a list column, a separated string or flags: give one")
        if (self.date_format is None) != (self.date_part is None):
            raise ValueError("a numeric feature from a date needs both `date_format` and `date_part`")
        allowed = {"categorical": ("int", "string"), "multi_hot": ("int", "string"), "numeric": ("int", "float"),
                   "text": ("string",)}[self.kind]
        if self.type is not None and not self.type.startswith(allowed):
            raise ValueError(f"type {self.type!r} does not fit a {self.kind} feature (expected {' or '.join(allowed)})")
        return self

    @property
    def output(self) -> str:
        return self.name or self.column or ""

    def source_columns(self) -> list[str]:
        """The file columns this feature reads."""
        return list(self.flags) if self.flags is not None else [self.column or ""]


class _Files(_Model):
    path: str = Field(description="a file, a glob (events/*.parquet) or a directory (partitioned: key=value "
                                  "folders become columns); a local path, relative to the declaration (or to "
                                  "--data-dir), or an s3:// URI")
    format: Literal["parquet", "csv"] | None = Field(None, description="default: from the file name's extension")
    csv: Csv | None = Field(None, description="how to read CSV files")

    @model_validator(mode="after")
    def _csv_for_csv(self) -> _Files:
        if self.csv is not None and self.format == "parquet":
            raise ValueError("`csv` options are for format: csv")
        return self


class Events(_Files):
    """The interactions: one row per event (a view, a click, a rating, a purchase)."""

    user: Key
    item: Key
    time: Time
    features: list[Feature] = Field([], description="context features of the event (device, query, ...)")

    _user = field_validator("user", "item", mode="before", json_schema_input_type=Key | str)(_column_shorthand)
    _time = field_validator("time", mode="before", json_schema_input_type=Time | str)(_column_shorthand)


class FeatureTable(_Files):
    """Features of users or of items: one row per key (static), or rows that hold from their time on."""

    name: str | None = Field(None, description="the view's name (default: users / items)")
    key: str = Field(description="the column holding the user's / item's id")
    time: Time | None = Field(None, description="rows are time-stamped: each holds from its time on (default: "
                                                "static, one row per key holding for all time)")
    ttl: str | None = Field(None, json_schema_extra={"pattern": _DURATION_PATTERN},
                            description="a time-stamped row holds at most this long, e.g. 30d, 12h, 90min")
    duplicate_keys: Literal["error", "first", "last"] = Field(
        "error", description="a static table with several rows per key: refuse (default) or keep the first / last")
    features: list[Feature] = Field(min_length=1)

    _time = field_validator("time", mode="before", json_schema_input_type=Time | str | None)(_column_shorthand)

    @field_validator("ttl")
    @classmethod
    def _duration(cls, text: str | None) -> str | None:
        if text is not None and not _DURATION.match(text):
            raise ValueError(f"expected a duration such as 30d, 12h, 90min, 45s or 2w, found {text!r}")
        return text

    @model_validator(mode="after")
    def _time_rules(self) -> FeatureTable:
        if self.ttl is not None and self.time is None:
            raise ValueError("`ttl` is for time-stamped rows: declare their `time` too")
        if self.duplicate_keys != "error" and self.time is not None:
            raise ValueError("`duplicate_keys` is for static tables; time-stamped rows of one key are its history")
        return self

    @property
    def ttl_delta(self) -> dt.timedelta | None:
        if self.ttl is None:
            return None
        match = _DURATION.match(self.ttl)
        assert match is not None  # the field's pattern
        return dt.timedelta(**{_DURATION_UNITS[match[2]]: float(match[1])})


class Sequence(_Model):
    """A user's last events' values before each event (oldest first)."""

    name: str
    column: str = Field(description="an event column by its name in grec: the item key or a categorical event feature")
    length: int | None = Field(None, ge=1, description="values kept (default: --sequence-length, 50)")
    vocabulary: str | None = Field(None, description="the categorical feature whose ids it shares (default: `column`)")


class _Task(_Model):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    role: Literal["main", "auxiliary"] = "main"
    descriptors: dict[str, str] = Field({}, description="the task sentence's words, e.g. {type: click, scenario: home}")


class BinaryTask(_Task):
    """Positive where a condition over event columns holds."""

    kind: Literal["binary"]
    positive: str = Field(description="condition over the events file's columns, e.g. 'rating >= 4', 'clicked == 1'")
    missing_labels: bool = Field(False, description="events whose condition is missing (a null input) are unlabelled "
                                                     "(default: an error)")

    @field_validator("positive")
    @classmethod
    def _parses(cls, text: str) -> str:
        try:
            parse_expression(text)
        except ExpressionError as err:
            raise ValueError(str(err)) from None
        return text


class RegressionTask(_Task):
    """A number to predict: an event column."""

    kind: Literal["regression"]
    column: str
    missing_labels: bool = False


class MulticlassTask(_Task):
    """One of several classes: an event column whose values are the classes."""

    kind: Literal["multiclass"]
    column: str
    classes: list[str] | list[int] = Field(min_length=2, description="every value, in class-id order")
    missing_labels: bool = False

    @field_validator("classes")
    @classmethod
    def _distinct(cls, classes: list) -> list:
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes repeat a value: {classes}")
        return classes


class ImplicitTask(_Task):
    """Implicit feedback: no label, every event is a positive (top-N recommendation)."""

    kind: Literal["implicit"]


TaskDeclaration = Annotated[Union[BinaryTask, RegressionTask, MulticlassTask, ImplicitTask],  # noqa: UP007
                            Field(discriminator="kind")]


class DatasetDeclaration(_Model):
    """A dataset: its files, their columns' roles, sequences and tasks."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="grec dataset declaration")

    version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="the dataset's name")
    description: str | None = None
    events: Events
    users: FeatureTable | None = Field(None, description="user features")
    items: FeatureTable | None = Field(None, description="item features")
    sequences: list[Sequence] = []
    tasks: list[TaskDeclaration] = Field(min_length=1)

    @model_validator(mode="after")
    def _tasks(self) -> DatasetDeclaration:
        names = [t.name for t in self.tasks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"task names repeat: {repeated}")
        if not any(t.role == "main" for t in self.tasks):
            raise ValueError("no task has role: main; at least one must")
        return self


def declaration_schema() -> dict[str, Any]:
    """The JSON schema of a declaration (docs/dataset_declaration.schema.json)."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **DatasetDeclaration.model_json_schema()}


def declaration_schema_text() -> str:
    return json.dumps(declaration_schema(), indent=2) + "\n"


def parse_declaration(data: Any, source: str) -> DatasetDeclaration:
    """A validated declaration from parsed YAML; `source` names the file in errors."""
    if not isinstance(data, dict):
        raise DeclarationError(f"{source}: expected a mapping (name, events, tasks, ...), found "
                               f"{type(data).__name__}")
    try:
        return DatasetDeclaration.model_validate(data)
    except ValidationError as err:
        problems = "; ".join(_problem(e) for e in err.errors())
        raise DeclarationError(f"{source}: {problems}") from None


def load_declaration(path: str | Path) -> DatasetDeclaration:
    path = Path(path)
    if not path.is_file():
        raise DeclarationError(f"declaration {path} does not exist" if not path.exists() else
                               f"declaration {path} is not a file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DeclarationError(f"{path}: not valid YAML ({err})") from None
    return parse_declaration(data, str(path))


# ---- error messages ---------------------------------------------------------------------------------
def _problem(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    where = _path(loc)
    if error["type"] == "extra_forbidden":
        keys = _keys_at(loc[:-1])
        return (f"{where}: unknown key {loc[-1]!r}{nearest(str(loc[-1]), keys)} "
                f"(valid keys{' of ' + _path(loc[:-1]) if loc[:-1] else ''}: {', '.join(keys)})")
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = "missing (required)"
    elif error["type"] in ("literal_error", "union_tag_invalid", "enum"):
        ctx = error.get("ctx", {})
        expected = re.findall(r"'([^']*)'", str(ctx.get("expected", ctx.get("expected_tags", ""))))
        found = error.get("input") if error["type"] != "union_tag_invalid" else error["ctx"].get("tag")
        message += nearest(str(found), expected) if isinstance(found, str) else ""
    return f"{where}: {message}" if where else message


def _path(loc: tuple) -> str:
    """events.features[2].kind (pydantic's loc without the discriminator's tag)."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part not in ("binary", "regression", "multiclass", "implicit") or not text.endswith("]"):
            text += f".{part}" if text else str(part)
    return text


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models inside an annotation (through Optional, unions, Annotated and lists)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models(arg)]


def _item_type(annotation: Any) -> Any:
    """The element type of a list inside an annotation."""
    if get_origin(annotation) is list:
        return get_args(annotation)[0]
    for arg in get_args(annotation):
        found = _item_type(arg)
        if found is not None:
            return found
    return None


def _keys_at(loc: tuple) -> list[str]:
    """The keys a mapping at `loc` may hold (for `did you mean`)."""
    node: Any = DatasetDeclaration
    for part in loc:
        if isinstance(part, int):
            node = _item_type(node)
            continue
        models = _models(node)
        field_owner = next((m for m in models if part in m.model_fields), None)
        if field_owner is not None:
            node = field_owner.model_fields[part].annotation
        else:  # a discriminated union's tag
            node = next((m for m in models if "kind" in m.model_fields
                         and get_args(m.model_fields["kind"].annotation) == (part,)), None)
        if node is None:
            return []
    return [name for m in _models(node) for name in m.model_fields]
