"""Distillation: a student trained as a Ray Train + DeepSpeed run on the teacher's soft outputs plus
the labels, registered as its own model (`grec distill`)."""

from __future__ import annotations

import pyarrow as pa
import pytest
import torch
from conftest import REPO_ROOT, serving_register, serving_train_tiny_model

from grec import ModelOutput
from jobs.compact.distill import TEACHER_PREFIX, Distillation, DistillationSection, load_student_config
from jobs.train.config import ConfigError

STUDENT_CONFIG = REPO_ROOT / "configs" / "student_tiny_test.yaml"


def _distillation(**kinds: str) -> Distillation:
    return Distillation("models:/teacher/1", "sqlite:///unused", dict(kinds), weight=1.0, temperature=2.0)


def _out(**logits: torch.Tensor) -> ModelOutput:
    return ModelOutput(dict(logits), {name: value.unsqueeze(-1) for name, value in logits.items()}, {})


def _batch(**teacher: torch.Tensor):
    class Batch:
        labels = {TEACHER_PREFIX + name: value for name, value in teacher.items()}
    return Batch()


def test_soft_target_loss_is_smallest_where_the_student_matches_the_teacher():
    distillation = _distillation(like="binary", rating="regression", genre="multiclass")
    teacher = {"like": torch.tensor([2.0, -1.0]), "rating": torch.tensor([4.0, 2.5]),
               "genre": torch.tensor([[1.0, 0.0, -1.0], [0.0, 3.0, 0.0]])}
    student = {name: value.clone().requires_grad_(True) for name, value in teacher.items()}
    loss, parts = distillation.extra_loss(_out(**student), _batch(**teacher), task_scale=1.0)
    loss.backward()
    for name, value in student.items():  # the minimum: no gradient where the student equals the teacher
        assert value.grad.abs().max() < 1e-6, name
    assert set(parts) == {"distill/like", "distill/rating", "distill/genre"}
    assert float(parts["distill/rating"]) == 0.0 and float(parts["distill/genre"]) == pytest.approx(0.0, abs=1e-6)
    moved = {**teacher, "like": teacher["like"] + 1.0, "rating": teacher["rating"] - 1.0}
    worse, _ = distillation.extra_loss(_out(**moved), _batch(**teacher), task_scale=2.0)
    assert worse.item() > loss.item()


def test_tasks_the_step_did_not_score_add_nothing():
    distillation = _distillation(like="binary", love="binary")
    loss, parts = distillation.extra_loss(_out(like=torch.zeros(3)), _batch(like=torch.zeros(3), love=torch.ones(3)),
                                          task_scale=1.0)
    assert set(parts) == {"distill/like"} and float(loss) > 0


def test_soft_targets_ride_along_the_collated_batch():
    collate = _distillation(like="binary", genre="multiclass").collate(lambda table: _batch())
    table = pa.table({TEACHER_PREFIX + "like": pa.array([0.5, -0.5], pa.float32()),
                      TEACHER_PREFIX + "genre": pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2, 3, 4, 5, 6]), 3)})
    labels = collate(table).labels
    assert labels[TEACHER_PREFIX + "like"].tolist() == [0.5, -0.5]
    assert labels[TEACHER_PREFIX + "genre"].shape == (2, 3)


def test_student_config_is_a_training_config_plus_its_section(tmp_path):
    config, section = load_student_config(STUDENT_CONFIG)
    assert section == DistillationSection(teacher=None, weight=1.0, temperature=2.0)
    assert config.features.exclude == ["title"] and config.training.epochs == 1
    bad = tmp_path / "student.yaml"
    bad.write_text(STUDENT_CONFIG.read_text().replace("temperature: 2.0", "temperature: 0\n  alpha: 1"))
    with pytest.raises(ConfigError, match=r"distillation.temperature: .*greater than 0.*distillation.alpha"):
        load_student_config(bad)


# ---- the job ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tiny_movielens):
    """A tiny GRec trained in-process on the tiny dataset, registered as champion."""
    tracking_uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    version = serving_register(serving_train_tiny_model(tiny_movielens, seed=0, steps=4), tiny_movielens,
                               "grec-tiny-teacher", tracking_uri, alias="champion")
    return tracking_uri, f"models:/grec-tiny-teacher/{version}"


def _student(train_tiny_config, tiny_movielens, tracking_uri):
    config, section = load_student_config(STUDENT_CONFIG)
    base = train_tiny_config(tiny_movielens.root, tracking_uri)  # the test's dataset, storage and MLflow
    return config.with_overrides(dataset={"path": str(tiny_movielens.root)}, mlflow={"tracking_uri": tracking_uri},
                                 scaling={"storage_path": base.scaling.storage_path}), section


def test_a_teacher_from_another_dataset_is_refused(teacher, train_tiny_config, tiny_movielens, tmp_path):
    from feature_store.prepare import prepare_dataset
    from feature_store.sources import SourceOptions
    from jobs.compact.distill import plan_distillation
    from registry.tracking import use_tracking_uri

    tracking_uri, teacher_uri = teacher
    other = prepare_dataset("movielens-100k", tmp_path / "other", options=SourceOptions(max_events=300,
                                                                                         sequence_length=8))
    config, section = _student(train_tiny_config, tiny_movielens, tracking_uri)
    config = config.with_overrides(dataset={"path": str(other.root)})
    with use_tracking_uri(tracking_uri), pytest.raises(ConfigError, match="trained on another prepared dataset"):
        plan_distillation(config, section.model_copy(update={"teacher": teacher_uri}), tracking_uri)
    with use_tracking_uri(tracking_uri), pytest.raises(ConfigError, match="distillation.teacher: name the teacher"):
        plan_distillation(config, section, tracking_uri)


@pytest.mark.slow
def test_distill_trains_and_registers_the_student(teacher, train_tiny_config, ray_local, tiny_movielens):
    from mlflow import MlflowClient

    from grec import count_parameters
    from jobs.compact.distill import run_distillation
    from registry.models import load_registered, resolve_version
    from registry.tracking import use_tracking_uri

    tracking_uri, teacher_uri = teacher
    config, section = _student(train_tiny_config, tiny_movielens, tracking_uri)
    result = run_distillation(config, section.model_copy(update={"teacher": teacher_uri}), show_progress=False)
    client = MlflowClient(tracking_uri=tracking_uri)
    run = client.get_run(result.run_id)
    assert run.data.tags["grec.job"] == "distill" and run.data.tags["grec.teacher"] == teacher_uri
    for task in ("like", "love", "rating"):  # the soft-target loss of every task, logged per step
        assert client.get_metric_history(result.run_id, f"train/distill/{task}")
    assert 0.0 <= result.metrics["val/like/auc"] <= 1.0
    with use_tracking_uri(tracking_uri):
        assert resolve_version("models:/grec-tiny-student@challenger") == ("grec-tiny-student", result.model_version)
        student, parent = (load_registered(uri).model for uri in ("models:/grec-tiny-student@challenger", teacher_uri))
    assert client.get_model_version("grec-tiny-student", result.model_version).tags["grec.teacher"] == teacher_uri
    assert student.encoder.text_encoder is None  # the title is not one of its features
    assert count_parameters(student) < count_parameters(parent) / 10
