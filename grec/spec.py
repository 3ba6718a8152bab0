"""The dataset spec (docs/CONTRACTS.md section 1) as the model reads it: features, tasks and keys,
typed with pydantic and validated once, at construction.

The spec owns what the model needs of a task (a name usable as a parameter key, a known kind and
role, an output width, implicit feedback only on a binary head); the feature store, which writes the
spec, owns what the task's label column holds and trusts these rules to be checked here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from grec.validated import PositionalValidated, Validated

Source = Literal["user", "item", "context"]
# Names become parameter keys (torch ParameterDict / ModuleDict), which forbid dots.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]*$")]


class CategoricalFeature(PositionalValidated):
    name: Name
    vocab_size: int = Field(ge=2, description="ids 1..vocab_size-1 (0 is padding)")
    multi_hot: bool = False
    source: Source = "context"


class NumericFeature(PositionalValidated):
    name: Name
    source: Source = "context"


class SequenceFeature(PositionalValidated):
    name: Name
    length: int = Field(ge=1)
    vocab_feature: str = Field(description="the categorical feature whose ids the sequence holds")


class TextFeature(PositionalValidated):
    name: Name
    source: Source = "context"
    max_length: int = Field(32, ge=2, description="tokens kept, the special ones included")


class TaskSpec(PositionalValidated):
    """A task as the model sees it. Its rules here are the model's (a head of `output_dim` outputs,
    implicit feedback trained as binary with sampled negatives); what its label column holds is the
    feature store's to check, and trusted here."""

    name: Name
    kind: Literal["binary", "regression", "multiclass"]
    label: str
    role: Literal["main", "auxiliary"] = "main"
    num_classes: int | None = None
    descriptors: dict[str, str] = Field(default_factory=dict)
    # Implicit feedback: every labelled row is a positive; training samples negatives (other rows'
    # items) for it.
    implicit: bool = False

    @field_validator("descriptors", mode="before")
    @classmethod
    def _descriptors_as_strings(cls, value: Any) -> dict[str, str]:
        # Descriptor values are categorical facts; store them as strings so JSON round-trips exactly.
        return {str(k): str(v) for k, v in dict(value).items()}

    @model_validator(mode="after")
    def _fits_its_head(self) -> TaskSpec:
        if self.kind == "multiclass":
            if self.num_classes is None or self.num_classes < 2:
                raise ValueError(f"task {self.name!r}: multiclass needs num_classes >= 2, got {self.num_classes}")
        elif self.num_classes is not None:
            raise ValueError(f"task {self.name!r}: num_classes is only for multiclass tasks (kind {self.kind!r})")
        if self.implicit and self.kind != "binary":
            raise ValueError(f"task {self.name!r}: implicit feedback is a binary task, got kind {self.kind!r}")
        return self

    @property
    def output_dim(self) -> int:
        return self.num_classes if self.kind == "multiclass" else 1


_Named = TypeVar("_Named", CategoricalFeature, TaskSpec)


class InputSpec(Validated):
    """Features, tasks and keys of a prepared dataset. Unknown top-level keys (metadata) are ignored."""

    model_config = ConfigDict(extra="ignore")

    name: str
    categorical: tuple[CategoricalFeature, ...] = ()
    numeric: tuple[NumericFeature, ...] = ()
    sequences: tuple[SequenceFeature, ...] = ()
    text: tuple[TextFeature, ...] = ()
    tasks: tuple[TaskSpec, ...] = ()
    user_id: str | None = "user_id"
    item_id: str | None = "item_id"
    timestamp: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        feature_names = [f.name for group in (self.categorical, self.numeric, self.sequences, self.text) for f in group]
        duplicates = sorted({n for n in feature_names if feature_names.count(n) > 1})
        if duplicates:
            raise ValueError(f"spec {self.name!r}: feature names used twice: {duplicates}")
        if not self.tasks:
            raise ValueError(f"spec {self.name!r}: needs at least one task")
        if len(set(self.task_names)) != len(self.task_names):
            raise ValueError(f"spec {self.name!r}: task names used twice: {self.task_names}")
        categorical = [c.name for c in self.categorical]
        for seq in self.sequences:
            if seq.vocab_feature not in categorical:
                raise ValueError(f"sequence {seq.name!r}: vocab_feature {seq.vocab_feature!r} is not a categorical "
                                 f"feature (known: {sorted(categorical)})")
        if not feature_names:
            raise ValueError(f"spec {self.name!r}: has no features")
        return self

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskSpec:
        return _by_name(self.tasks, name, "task")

    def categorical_feature(self, name: str) -> CategoricalFeature:
        return _by_name(self.categorical, name, "categorical feature")

    def with_task(self, task: TaskSpec) -> InputSpec:
        """A copy with one more task (adding a task is a config change)."""
        return self.replace(tasks=(*self.tasks, task))


def _by_name(entries: Iterable[_Named], name: str, what: str) -> _Named:
    entries = tuple(entries)
    for entry in entries:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown {what} {name!r}; known: {[e.name for e in entries]}")
