"""The dataset spec (docs/CONTRACTS.md section 1): what the feature store produces, typed and validated."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

SOURCES = ("user", "item", "context")
TASK_KINDS = ("binary", "regression", "multiclass")
TASK_ROLES = ("main", "auxiliary")

# Names become parameter keys (torch ParameterDict / ModuleDict), which forbid dots.
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r} must match {_NAME.pattern} (letters, digits, '_', '-')")


def _check_choice(what: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{what} is {value!r}; expected one of {list(allowed)}")


def _entry(cls: type, data: dict[str, Any], where: str) -> Any:
    """Builds a spec entry from a dict, naming unknown or missing keys."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; expected keys among {sorted(known)}")
    try:
        return cls(**data)
    except TypeError as err:  # missing required keys
        raise ValueError(f"{where}: {err}") from None


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    vocab_size: int
    multi_hot: bool = False
    source: str = "context"

    def __post_init__(self) -> None:
        _check_name("categorical feature", self.name)
        _check_choice(f"categorical {self.name!r} source", self.source, SOURCES)
        if int(self.vocab_size) < 2:
            raise ValueError(f"categorical {self.name!r}: vocab_size {self.vocab_size} must be >= 2 (0 is padding)")


@dataclass(frozen=True)
class NumericFeature:
    name: str
    source: str = "context"

    def __post_init__(self) -> None:
        _check_name("numeric feature", self.name)
        _check_choice(f"numeric {self.name!r} source", self.source, SOURCES)


@dataclass(frozen=True)
class SequenceFeature:
    name: str
    length: int
    vocab_feature: str

    def __post_init__(self) -> None:
        _check_name("sequence feature", self.name)
        if int(self.length) < 1:
            raise ValueError(f"sequence {self.name!r}: length {self.length} must be >= 1")


@dataclass(frozen=True)
class TextFeature:
    name: str
    source: str = "context"
    max_length: int = 32

    def __post_init__(self) -> None:
        _check_name("text feature", self.name)
        _check_choice(f"text {self.name!r} source", self.source, SOURCES)
        if int(self.max_length) < 2:
            raise ValueError(f"text {self.name!r}: max_length {self.max_length} must be >= 2")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: str
    label: str
    role: str = "main"
    num_classes: int | None = None
    descriptors: dict[str, str] = field(default_factory=dict)
    # Implicit feedback: every labelled row is a positive; training samples negatives (other rows'
    # items) for it.
    implicit: bool = False

    def __post_init__(self) -> None:
        _check_name("task", self.name)
        _check_choice(f"task {self.name!r} kind", self.kind, TASK_KINDS)
        _check_choice(f"task {self.name!r} role", self.role, TASK_ROLES)
        if self.kind == "multiclass":
            if self.num_classes is None or int(self.num_classes) < 2:
                raise ValueError(f"task {self.name!r}: multiclass needs num_classes >= 2, got {self.num_classes}")
        elif self.num_classes is not None:
            raise ValueError(f"task {self.name!r}: num_classes is only for multiclass tasks (kind {self.kind!r})")
        if self.implicit and self.kind != "binary":
            raise ValueError(f"task {self.name!r}: implicit feedback is a binary task, got kind {self.kind!r}")
        # Descriptor values are categorical facts; store them as strings so JSON round-trips exactly.
        object.__setattr__(self, "descriptors", {str(k): str(v) for k, v in dict(self.descriptors).items()})

    @property
    def output_dim(self) -> int:
        return int(self.num_classes) if self.kind == "multiclass" else 1


@dataclass(frozen=True)
class InputSpec:
    """Features, tasks and keys of a prepared dataset."""

    name: str
    categorical: tuple[CategoricalFeature, ...] = ()
    numeric: tuple[NumericFeature, ...] = ()
    sequences: tuple[SequenceFeature, ...] = ()
    text: tuple[TextFeature, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()
    user_id: str | None = "user_id"
    item_id: str | None = "item_id"
    timestamp: str | None = None

    def __post_init__(self) -> None:
        for attr in ("categorical", "numeric", "sequences", "text", "tasks"):
            object.__setattr__(self, attr, tuple(getattr(self, attr)))
        feature_names = [f.name for group in (self.categorical, self.numeric, self.sequences, self.text) for f in group]
        duplicates = sorted({n for n in feature_names if feature_names.count(n) > 1})
        if duplicates:
            raise ValueError(f"spec {self.name!r}: feature names used twice: {duplicates}")
        task_names = [t.name for t in self.tasks]
        if not task_names:
            raise ValueError(f"spec {self.name!r}: needs at least one task")
        if len(set(task_names)) != len(task_names):
            raise ValueError(f"spec {self.name!r}: task names used twice: {task_names}")
        categorical = {c.name: c for c in self.categorical}
        for seq in self.sequences:
            if seq.vocab_feature not in categorical:
                raise ValueError(
                    f"sequence {seq.name!r}: vocab_feature {seq.vocab_feature!r} is not a categorical feature "
                    f"(known: {sorted(categorical)})"
                )
        if not (self.categorical or self.numeric or self.sequences or self.text):
            raise ValueError(f"spec {self.name!r}: has no features")

    # ---- lookups -------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"unknown task {name!r}; tasks are {self.task_names}")

    def categorical_feature(self, name: str) -> CategoricalFeature:
        for feature in self.categorical:
            if feature.name == name:
                return feature
        raise KeyError(f"unknown categorical feature {name!r}")

    def with_task(self, task: TaskSpec) -> InputSpec:
        """A copy with one more task (adding a task is a config change)."""
        return InputSpec(**{**self._fields(), "tasks": (*self.tasks, task)})

    # ---- (de)serialization ---------------------------------------------------------------------
    def _fields(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "user_id": self.user_id, "item_id": self.item_id,
                                "timestamp": self.timestamp}
        for attr in ("categorical", "numeric", "sequences", "text", "tasks"):
            data[attr] = [{f.name: _plain(getattr(e, f.name)) for f in fields(e)} for e in getattr(self, attr)]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        """Reads a spec dict; unknown top-level keys are ignored (metadata), unknown entry keys are errors."""
        if not isinstance(data, dict) or "name" not in data:
            raise ValueError("dataset spec must be an object with at least 'name' and 'tasks'")
        entries = {
            "categorical": CategoricalFeature,
            "numeric": NumericFeature,
            "sequences": SequenceFeature,
            "text": TextFeature,
            "tasks": TaskSpec,
        }
        kwargs: dict[str, Any] = {
            attr: tuple(_entry(entry_cls, e, f"{attr}[{i}]") for i, e in enumerate(data.get(attr) or []))
            for attr, entry_cls in entries.items()
        }
        for key in ("user_id", "item_id", "timestamp"):
            if key in data:
                kwargs[key] = data[key]
        return cls(name=data["name"], **kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> InputSpec:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))


def _plain(value: Any) -> Any:
    return dict(value) if isinstance(value, dict) else value
