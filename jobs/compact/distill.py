"""`grec distill`: train a smaller student on a registered teacher's soft outputs plus the labels.

The student is an ordinary training run (`run_training`: Ray Train workers with DeepSpeed, the
training set streamed through Ray Data, MLflow, registration with alias `challenger` under the
student config's `mlflow.registered_model`, so the same promotion gate judges it). Distillation adds
two things through the run's `TrainingExtension`:

- one Ray Data stage on the training split: a pool of actors holding the teacher version appends
  the teacher's logits of every row (`teacher_logit/<task>` columns), so the teacher runs in the
  data pipeline beside the workers and every row meets its teacher output whatever the shuffling;
- per step, the soft-target loss over the tasks both models have (Hinton et al.'s, as Kuzmenko
  and Shvai use for multi-task students), added to the label loss:
  binary: T^2 * BCE(student / T, sigmoid(teacher / T)); multiclass: T^2 * KL(softmax(teacher / T)
  || softmax(student / T)); regression: MSE(student, teacher); times `distillation.weight`.

The student config is a training config with one more section:

    distillation: {teacher: models:/NAME@champion, weight: 1.0, temperature: 2.0}

The teacher must have been trained on the same prepared dataset (its transforms are compared).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jobs.train.config import ConfigError, TrainConfig, parse_config, read_config_file

log = logging.getLogger(__name__)

TEACHER_PREFIX = "teacher_logit/"
# Ray Data actors running the teacher, and the CPU share each asks (the training workers hold most).
TEACHER_ACTORS = 1
TEACHER_CPUS = 0.25
TEACHER_BATCH_ROWS = 1024


class DistillationSection(BaseModel):
    """The `distillation:` section of a student config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    teacher: str | None = Field(None, description="the teacher: models:/NAME@ALIAS or models:/NAME/VERSION "
                                                  "(`grec distill --teacher` overrides it)")
    weight: float = Field(1.0, ge=0, description="weight of the soft-target loss added to the label loss")
    temperature: float = Field(2.0, gt=0, description="softening temperature of binary and multiclass logits")


def load_student_config(path: str | Path) -> tuple[TrainConfig, DistillationSection]:
    """A student config: a training config plus its `distillation` section, each validated."""
    data = read_config_file(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    data = dict(data)
    try:
        section = DistillationSection.model_validate(data.pop("distillation", None) or {})
    except ValidationError as err:
        problems = "; ".join(f"distillation.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{path}: {problems}") from None
    return parse_config(data, str(path)), section


# ---- the teacher in the data pipeline ---------------------------------------------------------------


class TeacherLogits:
    """A Ray Data callable class: transformed rows in, the same rows plus the teacher's logits of
    `tasks` out ([B] or fixed-size lists [B, C])."""

    def __init__(self, teacher_uri: str, tracking_uri: str, tasks: list[str]) -> None:
        import torch

        from registry.models import load_registered

        torch.set_num_threads(1)
        self.model = load_registered(teacher_uri, tracking_uri=tracking_uri).model.eval()
        self.tasks = tasks

    def __call__(self, batch: Any) -> Any:
        import pyarrow as pa
        import torch

        with torch.inference_mode():
            logits = self.model(self.model.collate(batch), self.tasks).logits
        for task in self.tasks:
            values = logits[task].float().numpy()
            column = pa.array(values) if values.ndim == 1 else pa.FixedSizeListArray.from_arrays(
                pa.array(values.reshape(-1)), values.shape[1])
            batch = batch.append_column(TEACHER_PREFIX + task, column)
        return batch


@dataclass(frozen=True)
class Distillation:
    """The TrainingExtension of a student run (see the module docstring)."""

    teacher_uri: str  # pinned: models:/NAME/VERSION
    tracking_uri: str
    task_kinds: dict[str, str]  # distilled task -> kind (binary, regression, multiclass)
    weight: float
    temperature: float

    def train_dataset(self, dataset: Any) -> Any:
        import ray.data

        return dataset.map_batches(TeacherLogits, fn_constructor_kwargs={
            "teacher_uri": self.teacher_uri, "tracking_uri": self.tracking_uri, "tasks": list(self.task_kinds)},
            batch_format="pyarrow", batch_size=TEACHER_BATCH_ROWS,
            compute=ray.data.ActorPoolStrategy(size=TEACHER_ACTORS), num_cpus=TEACHER_CPUS)

    def collate(self, model_collate: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return _SoftTargets(model_collate, list(self.task_kinds))

    def extra_loss(self, out: Any, batch: Any, task_scale: float) -> tuple[Any, dict[str, Any]]:
        import torch
        import torch.nn.functional as F

        temperature = self.temperature
        losses, parts = [], {}
        for task, kind in self.task_kinds.items():
            if task not in out.logits:  # not sampled this step, or a sampled-softmax head in training
                continue
            teacher = batch.labels[TEACHER_PREFIX + task].float()
            # The teacher scored the batch's own rows, which come before any sampled negatives.
            student = out.logits[task].float()[:teacher.shape[0]]
            if kind == "binary":
                loss = F.binary_cross_entropy_with_logits(student / temperature, torch.sigmoid(teacher / temperature))
                loss = loss * temperature ** 2
            elif kind == "multiclass":
                loss = F.kl_div(F.log_softmax(student / temperature, -1), F.log_softmax(teacher / temperature, -1),
                                log_target=True, reduction="batchmean") * temperature ** 2
            else:
                loss = F.mse_loss(student, teacher)
            losses.append(loss)
            parts[f"distill/{task}"] = loss.detach()
        if not losses:
            return out.hidden[next(iter(out.hidden))].new_zeros(()), parts
        return self.weight * task_scale * torch.stack(losses).sum(), parts


class _SoftTargets:
    """The model's collate, plus the teacher's logits as `teacher_logit/<task>` entries of
    `batch.labels` (soft labels; the model's own loss reads only its tasks' names)."""

    def __init__(self, model_collate: Callable[[Any], Any], tasks: list[str]) -> None:
        self.model_collate, self.tasks = model_collate, tasks

    def __call__(self, table: Any) -> Any:
        import numpy as np
        import torch

        batch = self.model_collate(table)
        for task in self.tasks:
            column = table.column(TEACHER_PREFIX + task).combine_chunks()
            if hasattr(column.type, "list_size"):
                values = column.flatten().to_numpy().reshape(len(column), column.type.list_size)
            else:
                values = column.to_numpy(zero_copy_only=False)
            # a writable copy: arrow's buffers are read-only
            batch.labels[TEACHER_PREFIX + task] = torch.from_numpy(np.array(values, dtype=np.float32))
        return batch


# ---- the job -------------------------------------------------------------------------------------


def plan_distillation(config: TrainConfig, section: DistillationSection, tracking_uri: str) -> Distillation:
    """Checks the teacher against the student's dataset and tasks (before any cluster starts)."""
    from feature_store.transforms import TransformSet
    from jobs.train.config import resolve
    from registry.models import load_registered

    if section.teacher is None:
        raise ConfigError("distillation.teacher: name the teacher (models:/NAME@ALIAS), in the config or "
                          "with --teacher")
    try:
        teacher = load_registered(section.teacher)
    except Exception as err:  # noqa: BLE001 - the registry's own error types vary by store
        raise ConfigError(f"distillation.teacher: cannot load {section.teacher}: {err}") from None
    resolved = resolve(config)
    dataset_transforms = TransformSet.load(resolved.dataset_dir / "transforms.json")
    if teacher.transforms.to_dict() != dataset_transforms.to_dict():
        raise ConfigError(f"distillation.teacher: {section.teacher} was trained on another prepared dataset than "
                          f"{config.dataset.path} (their transforms differ); distil on the teacher's dataset")
    teacher_tasks = {t.name: t.kind for t in teacher.model.config.input.tasks}
    kinds = {t: teacher_tasks[t] for t in resolved.task_names if t in teacher_tasks}
    if not kinds:
        raise ConfigError(f"distillation.teacher: {section.teacher} has none of the student's tasks "
                          f"{resolved.task_names} (it has {sorted(teacher_tasks)})")
    return Distillation(f"models:/{teacher.name}/{teacher.version}", tracking_uri, kinds, section.weight,
                        section.temperature)


def run_distillation(config: TrainConfig, section: DistillationSection, *, show_progress: bool = True) -> Any:
    """Trains and registers the student (a TrainingResult); its MLflow run names the teacher."""
    from mlflow import MlflowClient

    from jobs.train import run_training
    from registry.tracking import resolve_tracking_uri, use_tracking_uri

    tracking_uri = resolve_tracking_uri(config.mlflow.tracking_uri)
    with use_tracking_uri(tracking_uri):
        plan = plan_distillation(config, section, tracking_uri)
    log.info("distilling %s into %s on tasks %s", plan.teacher_uri, config.mlflow.registered_model,
             list(plan.task_kinds))
    result = run_training(config.with_overrides(mlflow={"tracking_uri": tracking_uri}), show_progress=show_progress,
                          extension=plan)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)  # after run_training's block
    for key, value in {"grec.job": "distill", "grec.teacher": plan.teacher_uri}.items():
        client.set_tag(result.run_id, key, value)
    client.log_param(result.run_id, "distillation.weight", plan.weight)
    client.log_param(result.run_id, "distillation.temperature", plan.temperature)
    client.set_model_version_tag(result.model_name, result.model_version, "grec.teacher", plan.teacher_uri)
    return result
