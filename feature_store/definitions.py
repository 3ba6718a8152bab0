"""Feature definitions as code: entities, feature views, sequences, text, tasks, and the dataset
that groups them.

A `DatasetDefinition` is the single description every other part reads: the offline store takes
its view schemas, the training-set builder its joins, the transforms its feature kinds, the online
store its keys, and `dataset_spec` turns it into the JSON the model reads (docs/CONTRACTS.md §1).
Definitions are validated once, at construction, with errors that name what is wrong.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import pyarrow as pa

# Every timestamp in the store: microseconds, UTC. Inputs in other units (or naive, read as UTC)
# are converted at ingestion.
TIMESTAMP_TYPE = pa.timestamp("us", tz="UTC")
# Feature rows that hold for all time (static metadata such as a movie's genres) carry this time.
STATIC_FEATURE_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
# Version of definition.json; bump when its layout changes.
DEFINITION_VERSION = 1


class FeatureKind(StrEnum):
    CATEGORICAL = "categorical"
    MULTI_HOT = "multi_hot"
    NUMERIC = "numeric"
    TEXT = "text"


class TaskKind(StrEnum):
    BINARY = "binary"
    REGRESSION = "regression"
    MULTICLASS = "multiclass"


class TaskRole(StrEnum):
    MAIN = "main"
    AUXILIARY = "auxiliary"


def is_id_type(dtype: pa.DataType) -> bool:
    """Integer or string: a type ids (keys, categorical values) may have."""
    return pa.types.is_integer(dtype) or pa.types.is_string(dtype)


@dataclass(frozen=True)
class Entity:
    """A thing features are keyed by (a user, an item); `join_key` is its key column.

    `feature`: the key is also a model input (an id embedding). False for a key that names a single
    event (a census respondent, an anonymous reviewer): every test row would be a new id, so its
    embedding could only memorise the training rows. Such a key still joins, splits and groups."""

    name: str
    join_key: str
    dtype: pa.DataType = pa.int64()
    feature: bool = True

    def __post_init__(self) -> None:
        if not is_id_type(self.dtype):
            raise ValueError(f"entity {self.name!r}: key type must be an integer or string, got {self.dtype}")


@dataclass(frozen=True)
class Feature:
    """A categorical, multi-hot or numeric feature column."""

    name: str
    kind: FeatureKind
    dtype: pa.DataType

    def __post_init__(self) -> None:
        kind = FeatureKind(self.kind)
        object.__setattr__(self, "kind", kind)
        valid = {
            FeatureKind.CATEGORICAL: is_id_type(self.dtype),
            FeatureKind.MULTI_HOT: pa.types.is_list(self.dtype) and is_id_type(self.dtype.value_type),
            FeatureKind.NUMERIC: pa.types.is_integer(self.dtype) or pa.types.is_floating(self.dtype),
            FeatureKind.TEXT: False,
        }[kind]
        if not valid:
            expected = {
                FeatureKind.CATEGORICAL: "an integer or string type",
                FeatureKind.MULTI_HOT: "list<integer> or list<string>",
                FeatureKind.NUMERIC: "an integer or floating type",
                FeatureKind.TEXT: "nothing: declare text with TextFeature",
            }[kind]
            raise ValueError(f"feature {self.name!r} ({kind}): type must be {expected}, got {self.dtype}")


def categorical(name: str, dtype: pa.DataType = pa.string()) -> Feature:
    return Feature(name, FeatureKind.CATEGORICAL, dtype)


def multi_hot(name: str, value_type: pa.DataType = pa.string()) -> Feature:
    return Feature(name, FeatureKind.MULTI_HOT, pa.list_(value_type))


def numeric(name: str, dtype: pa.DataType = pa.float64()) -> Feature:
    return Feature(name, FeatureKind.NUMERIC, dtype)


@dataclass(frozen=True)
class TextFeature:
    """Raw text kept for the model's tokenizer; `max_length` is the token budget it should use."""

    name: str
    max_length: int = 32

    @property
    def kind(self) -> FeatureKind:
        return FeatureKind.TEXT

    @property
    def dtype(self) -> pa.DataType:
        return pa.string()

    def __post_init__(self) -> None:
        if self.max_length < 1:
            raise ValueError(f"text feature {self.name!r}: max_length must be >= 1, got {self.max_length}")


AnyFeature = Feature | TextFeature


@dataclass(frozen=True)
class FeatureView:
    """Features of one entity that change over time: each row holds from its timestamp on, for
    `ttl` (None: forever)."""

    name: str
    entity: Entity
    features: tuple[AnyFeature, ...]
    timestamp_field: str = "feature_timestamp"
    ttl: dt.timedelta | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "features", tuple(self.features))
        if not self.features:
            raise ValueError(f"feature view {self.name!r} has no features")
        if self.ttl is not None and self.ttl <= dt.timedelta(0):
            raise ValueError(f"feature view {self.name!r}: ttl must be positive, got {self.ttl}")
        _require_unique([self.entity.join_key, self.timestamp_field, *(f.name for f in self.features)],
                        f"feature view {self.name!r}")

    @property
    def key_field(self) -> str:
        return self.entity.join_key

    @property
    def schema(self) -> pa.Schema:
        return _stored_schema([self.entity], self.timestamp_field, [pa.field(f.name, f.dtype) for f in self.features])


@dataclass(frozen=True)
class SequenceFeature:
    """A user's last `length` values of the event column `field` (oldest first), made only of
    events strictly before the one being predicted. Ids share the vocabulary of `vocab_feature`."""

    name: str
    field: str = "item_id"
    length: int = 50
    vocab_feature: str = "item_id"

    def __post_init__(self) -> None:
        if self.length < 1:
            raise ValueError(f"sequence {self.name!r}: length must be >= 1, got {self.length}")


@dataclass(frozen=True)
class Task:
    """A prediction task whose label is the event column `label` (default `label_<name>`).

    `missing_labels`: the label is null on events the task does not cover (a scenario's task, such
    as "like" among one genre's movies); losses and metrics read the labelled events only.
    `implicit`: implicit feedback, a binary task whose every event is a positive (its label column
    holds 1 on every event); training and evaluation score it against items sampled from the other
    events (the catalogue's interaction distribution), as top-N recommenders do.

    A task's rules have one owner each. The feature store owns its label column: the name, the type
    its kind gives, whether it may be null, and (validation.py, at ingestion) that its values fit the
    kind. The model's `grec.TaskSpec`, which jobs build from `to_spec()`, owns what the model needs:
    the name as a parameter key, num_classes (>= 2) exactly for multiclass, implicit feedback only
    on a binary task; they are not checked again here."""

    name: str
    kind: TaskKind
    label: str = ""
    role: TaskRole = TaskRole.MAIN
    num_classes: int | None = None
    descriptors: Mapping[str, str] = field(default_factory=dict)
    missing_labels: bool = False
    implicit: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", TaskKind(self.kind))
        object.__setattr__(self, "role", TaskRole(self.role))
        object.__setattr__(self, "descriptors", dict(self.descriptors))
        if not self.label:
            object.__setattr__(self, "label", f"label_{self.name}")
        if self.implicit and self.missing_labels:
            raise ValueError(f"task {self.name!r}: implicit feedback (every event a positive) has a label on every "
                             "event; drop missing_labels")

    @property
    def label_dtype(self) -> pa.DataType:
        """Type of the raw label column: 0/1 and class ids are int64, regression targets float64."""
        return pa.float64() if self.kind is TaskKind.REGRESSION else pa.int64()

    def to_spec(self) -> dict[str, Any]:
        return {"name": self.name, "kind": str(self.kind), "label": self.label, "role": str(self.role),
                "num_classes": self.num_classes, "descriptors": dict(self.descriptors), "implicit": self.implicit}


@dataclass(frozen=True)
class EventView:
    """The labeled events (user, item, time, context features, labels), as the offline store sees
    them. Built by `DatasetDefinition.event_view`, not by hand."""

    name: str
    user: Entity
    item: Entity
    timestamp_field: str
    context_features: tuple[AnyFeature, ...]
    tasks: tuple[Task, ...]

    @property
    def key_field(self) -> str:
        # Events are partitioned by user so that a user's whole history lies in one partition.
        return self.user.join_key

    @property
    def schema(self) -> pa.Schema:
        return _stored_schema([self.user, self.item], self.timestamp_field,
                              [pa.field(f.name, f.dtype) for f in self.context_features]
                              + [pa.field(t.label, t.label_dtype, nullable=t.missing_labels) for t in self.tasks])


@dataclass(frozen=True)
class DatasetDefinition:
    """Everything a dataset is made of. `feature_views` key on `user` or `item`."""

    name: str
    user: Entity
    item: Entity
    tasks: tuple[Task, ...]
    feature_views: tuple[FeatureView, ...] = ()
    context_features: tuple[AnyFeature, ...] = ()
    sequences: tuple[SequenceFeature, ...] = ()
    events_name: str = "events"
    timestamp_field: str = "event_timestamp"

    def __post_init__(self) -> None:
        for name in ("tasks", "feature_views", "context_features", "sequences"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        where = f"dataset {self.name!r}"
        if not self.tasks:
            raise ValueError(f"{where}: at least one task is required")
        if not any(t.role is TaskRole.MAIN for t in self.tasks):
            raise ValueError(f"{where}: at least one task must have role 'main'")
        _require_unique([t.name for t in self.tasks], f"{where} task names")
        _require_unique([self.events_name, *(v.name for v in self.feature_views)], f"{where} view names")
        for view in self.feature_views:
            if view.entity not in (self.user, self.item):
                raise ValueError(f"{where}: feature view {view.name!r} keys on entity {view.entity.name!r}; "
                                 f"expected {self.user.name!r} or {self.item.name!r}")
        event_columns = set(self.event_view.schema.names)
        categorical_names = {c.name for c in self.categorical_features()}
        for seq in self.sequences:
            if seq.field not in event_columns:
                raise ValueError(f"{where}: sequence {seq.name!r} reads event column {seq.field!r}, "
                                 f"which is not one of {sorted(event_columns)}")
            if seq.vocab_feature not in categorical_names:
                raise ValueError(f"{where}: sequence {seq.name!r} uses the vocabulary of {seq.vocab_feature!r}, "
                                 f"which is not a categorical feature ({sorted(categorical_names)})")
        _require_unique([c.name for c in self.training_schema()], f"{where} columns")

    # --- the views the offline store holds ---
    @property
    def event_view(self) -> EventView:
        return EventView(self.events_name, self.user, self.item, self.timestamp_field,
                         self.context_features, self.tasks)

    def views(self) -> tuple[EventView | FeatureView, ...]:
        return (self.event_view, *self.feature_views)

    def view(self, name: str) -> EventView | FeatureView:
        for view in self.views():
            if view.name == name:
                return view
        raise KeyError(f"dataset {self.name!r} has no view {name!r}; views: {[v.name for v in self.views()]}")

    def views_of(self, entity: Entity) -> tuple[FeatureView, ...]:
        return tuple(v for v in self.feature_views if v.entity == entity)

    # --- features by where they come from ---
    def sourced_features(self) -> list[tuple[AnyFeature, str]]:
        """Every feature with its spec `source` (user, item, context), keys first."""
        out: list[tuple[AnyFeature, str]] = [
            (categorical(entity.join_key, entity.dtype), source)
            for entity, source in ((self.user, "user"), (self.item, "item")) if entity.feature
        ]
        for view in self.feature_views:
            source = "user" if view.entity == self.user else "item"
            out.extend((f, source) for f in view.features)
        out.extend((f, "context") for f in self.context_features)
        return out

    def categorical_features(self) -> list[Feature]:
        return [f for f, _ in self.sourced_features()
                if f.kind in (FeatureKind.CATEGORICAL, FeatureKind.MULTI_HOT)]

    def sequence_value_type(self, seq: SequenceFeature) -> pa.DataType:
        return self.event_view.schema.field(seq.field).type

    # --- the untransformed training set ---
    def training_schema(self, include_labels: bool = True) -> pa.Schema:
        """Columns of a raw training row: keys, time, context, view features, sequences, labels.
        Serving builds request rows with exactly this schema minus the labels."""
        fields = [pa.field(self.user.join_key, self.user.dtype), pa.field(self.item.join_key, self.item.dtype),
                  pa.field(self.timestamp_field, TIMESTAMP_TYPE)]
        fields += [pa.field(f.name, f.dtype) for f in self.context_features]
        for view in self.feature_views:
            fields += [pa.field(f.name, f.dtype) for f in view.features]
        fields += [pa.field(s.name, pa.list_(self.sequence_value_type(s))) for s in self.sequences]
        if include_labels:
            fields += [pa.field(t.label, t.label_dtype) for t in self.tasks]
        return pa.schema(fields)

    # --- the dataset spec for the model (docs/CONTRACTS.md §1) ---
    def dataset_spec(self, vocab_sizes: Mapping[str, int]) -> dict[str, Any]:
        """The spec, given each categorical feature's vocabulary size (`TransformSet.vocab_sizes()`:
        definitions know nothing of fitted transforms, which are built from them)."""
        categorical_specs, numeric_specs, text_specs = [], [], []
        for feature, source in self.sourced_features():
            if feature.kind is FeatureKind.TEXT:
                text_specs.append({"name": feature.name, "source": source, "max_length": feature.max_length})
            elif feature.kind is FeatureKind.NUMERIC:
                numeric_specs.append({"name": feature.name, "source": source})
            else:
                categorical_specs.append({"name": feature.name, "vocab_size": vocab_sizes[feature.name],
                                          "multi_hot": feature.kind is FeatureKind.MULTI_HOT, "source": source})
        return {
            "name": self.name,
            "user_id": self.user.join_key,
            "item_id": self.item.join_key,
            "timestamp": self.timestamp_field,
            "categorical": categorical_specs,
            "numeric": numeric_specs,
            "sequences": [{"name": s.name, "length": s.length, "vocab_feature": s.vocab_feature}
                          for s in self.sequences],
            "text": text_specs,
            "tasks": [t.to_spec() for t in self.tasks],
        }

    # --- JSON round trip (definition.json in a prepared dataset, read by jobs and serving) ---
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "grec.dataset_definition", "version": DEFINITION_VERSION,
            "name": self.name, "user": _entity_to_dict(self.user), "item": _entity_to_dict(self.item),
            "events_name": self.events_name, "timestamp_field": self.timestamp_field,
            "tasks": [{**t.to_spec(), "missing_labels": t.missing_labels} for t in self.tasks],
            "feature_views": [
                {"name": v.name, "entity": v.entity.name, "timestamp_field": v.timestamp_field,
                 "ttl_seconds": None if v.ttl is None else v.ttl.total_seconds(),
                 "features": [_feature_to_dict(f) for f in v.features]}
                for v in self.feature_views
            ],
            "context_features": [_feature_to_dict(f) for f in self.context_features],
            "sequences": [{"name": s.name, "field": s.field, "length": s.length, "vocab_feature": s.vocab_feature}
                          for s in self.sequences],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DatasetDefinition:
        if data.get("format") != "grec.dataset_definition":
            raise ValueError(f"not a grec dataset definition (format={data.get('format')!r})")
        if data.get("version") != DEFINITION_VERSION:
            raise ValueError(f"dataset definition version {data.get('version')!r} is not supported "
                             f"(this grec reads version {DEFINITION_VERSION})")
        user, item = _entity_from_dict(data["user"]), _entity_from_dict(data["item"])
        entities = {user.name: user, item.name: item}
        views = tuple(
            FeatureView(v["name"], entities[v["entity"]], tuple(_feature_from_dict(f) for f in v["features"]),
                        v["timestamp_field"],
                        None if v["ttl_seconds"] is None else dt.timedelta(seconds=v["ttl_seconds"]))
            for v in data["feature_views"]
        )
        return cls(
            name=data["name"], user=user, item=item,
            tasks=tuple(Task(t["name"], t["kind"], t["label"], t["role"], t["num_classes"], t["descriptors"],
                             t.get("missing_labels", False), t.get("implicit", False))
                        for t in data["tasks"]),
            feature_views=views,
            context_features=tuple(_feature_from_dict(f) for f in data["context_features"]),
            sequences=tuple(SequenceFeature(**s) for s in data["sequences"]),
            events_name=data["events_name"], timestamp_field=data["timestamp_field"],
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> DatasetDefinition:
        return cls.from_dict(json.loads(Path(path).read_text()))


# The feature lists of a dataset spec (docs/CONTRACTS.md §1).
SPEC_FEATURE_GROUPS = ("categorical", "numeric", "sequences", "text")


def spec_feature_names(spec: Mapping[str, Any]) -> list[str]:
    """Every feature of a dataset spec, in spec order."""
    return [entry["name"] for group in SPEC_FEATURE_GROUPS for entry in spec.get(group) or []]


def select_features(spec: Mapping[str, Any], include: list[str] | None = None,
                    exclude: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The spec with only the chosen features: `include` (None: every feature) minus `exclude`.
    Keys, tasks and the time column stay. Errors (ValueError) name the list that is wrong: an unknown
    feature, one named in both lists, a sequence kept without the feature whose vocabulary it uses,
    or nothing left."""
    known = spec_feature_names(spec)
    for what, names in (("include", include or []), ("exclude", exclude)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{what} names unknown features {unknown}; dataset {spec.get('name')!r} has {known}")
    both = sorted(set(include or []) & set(exclude))
    if both:
        raise ValueError(f"include and exclude both name {both}; name each feature in one list")
    kept = {n for n in (known if include is None else include) if n not in set(exclude)}
    for sequence in spec.get("sequences") or []:
        if sequence["name"] in kept and sequence["vocab_feature"] not in kept:
            raise ValueError(f"sequence {sequence['name']!r} uses the vocabulary of {sequence['vocab_feature']!r}, "
                             f"which is left out; keep {sequence['vocab_feature']!r} or leave out "
                             f"{sequence['name']!r} too")
    if not kept:
        raise ValueError(f"no feature is left; dataset {spec.get('name')!r} has {known}")
    selected = dict(spec)
    for group in SPEC_FEATURE_GROUPS:
        selected[group] = [entry for entry in spec.get(group) or [] if entry["name"] in kept]
    return selected


def _stored_schema(entities: list[Entity], timestamp_field: str, columns: list[pa.Field]) -> pa.Schema:
    """A stored view's schema: its entities' keys and its time (never null), then its columns."""
    return pa.schema([pa.field(e.join_key, e.dtype, nullable=False) for e in entities]
                     + [pa.field(timestamp_field, TIMESTAMP_TYPE, nullable=False), *columns])


def _require_unique(names: list[str], where: str) -> None:
    seen: set[str] = set()
    duplicates = sorted({n for n in names if n in seen or seen.add(n)})
    if duplicates:
        raise ValueError(f"{where}: duplicate names {duplicates}")


# Types a definition may use, by the name written in definition.json.
_SCALAR_TYPES: dict[str, pa.DataType] = {
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "float32": pa.float32(), "float64": pa.float64(), "string": pa.string(),
}


def dtype_to_str(dtype: pa.DataType) -> str:
    if pa.types.is_list(dtype):
        return f"list<{dtype_to_str(dtype.value_type)}>"
    for name, known in _SCALAR_TYPES.items():
        if dtype == known:
            return name
    raise ValueError(f"type {dtype} cannot be used in a definition; supported: {sorted(_SCALAR_TYPES)} and list<...>")


def dtype_from_str(text: str) -> pa.DataType:
    """An arrow type from its name: a definition's (`float64`, `list<string>`) or arrow's own `str(type)`
    (`double`, `list<item: string>`, `timestamp[us, tz=UTC]`), which the offline store keeps."""
    if text.startswith("list<") and text.endswith(">"):
        return pa.list_(dtype_from_str(text[5:-1].split(": ", 1)[-1]))
    if text.startswith("timestamp[") and text.endswith("]"):
        unit, _, tz = text[len("timestamp["):-1].partition(", tz=")
        return pa.timestamp(unit, tz=tz or None)
    try:
        return pa.type_for_alias(text)
    except ValueError:
        raise ValueError(f"unknown type {text!r}; definitions use {sorted(_SCALAR_TYPES)} and list<...>") from None


def _entity_to_dict(entity: Entity) -> dict[str, Any]:
    return {"name": entity.name, "join_key": entity.join_key, "dtype": dtype_to_str(entity.dtype),
            "feature": entity.feature}


def _entity_from_dict(data: Mapping[str, Any]) -> Entity:
    return Entity(data["name"], data["join_key"], dtype_from_str(data["dtype"]), data.get("feature", True))


def _feature_to_dict(feature: AnyFeature) -> dict[str, Any]:
    if isinstance(feature, TextFeature):
        return {"name": feature.name, "kind": "text", "max_length": feature.max_length}
    return {"name": feature.name, "kind": str(feature.kind), "dtype": dtype_to_str(feature.dtype)}


def _feature_from_dict(data: Mapping[str, Any]) -> AnyFeature:
    if data["kind"] == "text":
        return TextFeature(data["name"], data["max_length"])
    return Feature(data["name"], FeatureKind(data["kind"]), dtype_from_str(data["dtype"]))
