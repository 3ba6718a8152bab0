"""Checks, before any work starts, that a model can be evaluated on a prepared dataset: the same
tasks (kind, label, classes) and every input column the model's transforms read, with a fitting type."""

from __future__ import annotations

import pyarrow as pa

from feature_store.transforms import TransformSet
from grec import InputSpec


class IncompatibleDataError(ValueError):
    """The model and the dataset disagree on tasks or schema."""


def _task_problems(model_spec: InputSpec, data_spec: InputSpec) -> list[str]:
    problems = []
    data_tasks = {t.name: t for t in data_spec.tasks}
    missing = [t.name for t in model_spec.tasks if t.name not in data_tasks]
    if missing:
        problems.append(f"the dataset has no task(s) {missing} (model tasks {model_spec.task_names}, "
                        f"dataset tasks {data_spec.task_names})")
    for task in model_spec.tasks:
        other = data_tasks.get(task.name)
        if other is None:
            continue
        for attr in ("kind", "label", "num_classes"):
            if getattr(task, attr) != getattr(other, attr):
                problems.append(f"task {task.name!r}: {attr} is {getattr(task, attr)!r} in the model but "
                                f"{getattr(other, attr)!r} in the dataset")
    return problems


def _feature_problems(model_spec: InputSpec, data_spec: InputSpec) -> list[str]:
    """Features by name and shape: multi-hot or not, sequence length, text or numeric."""
    def shapes(spec: InputSpec) -> dict[str, str]:
        out = {c.name: "multi-hot categorical" if c.multi_hot else "categorical" for c in spec.categorical}
        out.update({n.name: "numeric" for n in spec.numeric})
        out.update({s.name: f"sequence of {s.length} {s.vocab_feature} ids" for s in spec.sequences})
        out.update({t.name: "text" for t in spec.text})
        return out

    model, data = shapes(model_spec), shapes(data_spec)
    problems = []
    missing = sorted(set(model) - set(data))
    if missing:
        problems.append(f"the dataset has no feature(s) {missing}")
    problems += [f"feature {name!r} is {kind} in the model but {data[name]} in the dataset"
                 for name, kind in model.items() if name in data and data[name] != kind]
    for key in ("user_id", "item_id"):
        if getattr(model_spec, key) != getattr(data_spec, key):
            problems.append(f"{key} column is {getattr(model_spec, key)!r} in the model but "
                            f"{getattr(data_spec, key)!r} in the dataset")
    return problems


def _column_problems(model_spec: InputSpec, transforms: TransformSet, schema: pa.Schema, labels: bool) -> list[str]:
    """The raw split columns against what the model's transforms read."""
    problems = []

    def check(name: str, ok: bool, expected: str) -> None:
        if name not in schema.names:
            problems.append(f"the split has no column {name!r} ({expected})")
        elif not ok:
            problems.append(f"column {name!r} is {schema.field(name).type}; the model expects {expected}")

    def field_type(name: str) -> pa.DataType | None:
        return schema.field(name).type if name in schema.names else None

    for name, vocab in transforms.vocabularies.items():
        actual = field_type(name)
        expected = pa.list_(vocab.value_type) if vocab.multi_hot else vocab.value_type
        ok = actual is not None and (
            (pa.types.is_list(actual) and actual.value_type == vocab.value_type) if vocab.multi_hot
            else actual == vocab.value_type)
        check(name, ok, str(expected))
    for name in transforms.standardizers:
        actual = field_type(name)
        check(name, actual is not None and (pa.types.is_integer(actual) or pa.types.is_floating(actual)), "a number")
    for name, seq in transforms.sequences.items():
        actual = field_type(name)
        value_type = transforms.vocabularies[seq.vocab_feature].value_type
        check(name, actual is not None and pa.types.is_list(actual) and actual.value_type == value_type,
              f"list<{value_type}>")
    for name in transforms.text:
        actual = field_type(name)
        check(name, actual is not None and (pa.types.is_string(actual) or pa.types.is_large_string(actual)), "text")
    for task in model_spec.tasks if labels else ():
        actual = field_type(task.label)
        check(task.label, actual is not None and (pa.types.is_integer(actual) or pa.types.is_floating(actual)),
              f"the {task.kind} label of task {task.name!r}")
    return problems


def check_compatible(model_uri: str, model_spec: InputSpec, transforms: TransformSet, data_spec: InputSpec,
                     split_schema: pa.Schema, data_dir: str, *, labels: bool = True) -> None:
    """Raises IncompatibleDataError listing every mismatch between the model and the dataset.
    `labels=False` (prediction) checks the features only: the model's tasks need no labels there."""
    problems = (_task_problems(model_spec, data_spec) if labels else []) + _feature_problems(model_spec, data_spec)
    if not problems:  # column checks would only repeat a task or feature mismatch
        problems = _column_problems(model_spec, transforms, split_schema, labels)
    if problems:
        listed = "\n  - ".join(problems)
        raise IncompatibleDataError(
            f"model {model_uri} cannot be evaluated on {data_dir} ({data_spec.name}):\n  - {listed}\n"
            "Use the dataset the model was trained on (or one prepared with the same definition)."
        )
