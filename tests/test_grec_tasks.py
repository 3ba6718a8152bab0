"""The pieces MultiTaskModel delegates to, on their own: task heads as a group (grec.tasks), the
multi-task loss (grec.losses), task sampling (grec.task_sampling), labelled collation
(grec.collation), and the one-way arrow from GRec to its per-task export."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from torch import nn

from grec import LossConfig, TaskSpec, build_model
from grec.collation import LabelledCollator
from grec.losses import multitask_loss
from grec.negatives import add_sampled_negatives
from grec.output import ModelOutput
from grec.synthetic import random_columns
from grec.task_sampling import training_tasks
from grec.tasks import add_task_head, task_layout, task_logits, train_only

TASKS = [TaskSpec("like", "binary", "label_like"), TaskSpec("rating", "regression", "label_rating"),
         TaskSpec("next_item", "multiclass", "label_next", num_classes=5)]
NAMES = [t.name for t in TASKS]


def _heads(weighting: str = "fixed") -> tuple[nn.ModuleDict, nn.ParameterDict]:
    torch.manual_seed(0)
    heads, log_vars = nn.ModuleDict(), nn.ParameterDict()
    for task in TASKS:
        add_task_head(heads, log_vars, task, 4, weighting)
    return heads, log_vars


def test_added_heads_return_their_parameters_and_uncertainty_adds_a_log_variance():
    heads, log_vars = nn.ModuleDict(), nn.ParameterDict()
    new = add_task_head(heads, log_vars, TASKS[2], 4, "uncertainty")
    assert sum(p.numel() for p in new) == (4 + 1) * 5 + 1 and list(log_vars) == ["next_item"]
    assert len(add_task_head(heads, log_vars, TASKS[0], 4, "fixed")) == 2 and list(log_vars) == ["next_item"]


def test_grouped_scoring_equals_each_head_alone_and_leaves_out_sampled_tasks():
    heads, _ = _heads()
    tasks = ["next_item", "like", "rating"]
    layout = task_layout(NAMES, heads, tasks, torch.device("cpu"))
    assert layout.requested.tolist() == [2, 0, 1] and layout.scalar == [1, 2] and layout.multiclass == [0]
    hidden = torch.randn(3, 6, 4)
    logits = task_logits(heads, tasks, layout, hidden, without_logits=())
    assert list(logits) == tasks
    for task, h in zip(tasks, hidden):
        torch.testing.assert_close(logits[task], heads[task].logits(h))
    assert list(task_logits(heads, tasks, layout, hidden, without_logits={"next_item"})) == ["like", "rating"]


def _output(heads: nn.ModuleDict, aux: dict[str, torch.Tensor]) -> tuple[ModelOutput, dict[str, torch.Tensor]]:
    hidden = torch.randn(3, 6, 4)
    layout = task_layout(NAMES, heads, NAMES, torch.device("cpu"))
    labels = {"like": torch.tensor([1.0, 0.0, float("nan"), 1.0, 0.0, 1.0]), "rating": torch.randn(6),
              "next_item": torch.tensor([0, 4, -1, 2, 2, 1])}
    return ModelOutput(task_logits(heads, NAMES, layout, hidden, ()), dict(zip(NAMES, hidden)), aux), labels


def test_fixed_weights_scale_each_task_loss_and_the_router_losses_are_added(grec_config):
    heads, log_vars = _heads()
    config = grec_config(losses=LossConfig(task_weights={"like": 2.0, "next_item": 0.5}))
    out, labels = _output(heads, {"load_balance": torch.tensor(1.5), "router_z": torch.tensor(0.25)})
    total, parts = multitask_loss(out, labels, heads, log_vars, config, task_scale=3.0)
    each = {t: heads[t].loss(out.logits[t], labels[t]) for t in NAMES}
    expected = 3.0 * (2.0 * each["like"] + each["rating"] + 0.5 * each["next_item"])
    expected = expected + config.router.load_balance_weight * 1.5 + config.router.z_loss_weight * 0.25
    torch.testing.assert_close(total, expected)
    assert set(parts) == {"task/like", "task/rating", "task/next_item", "aux/load_balance", "aux/router_z"}
    torch.testing.assert_close(parts["task/like"], each["like"])


def test_uncertainty_weighting_reads_the_log_variances_and_unlabelled_outputs_are_refused(grec_config):
    heads, log_vars = _heads("uncertainty")
    with torch.no_grad():
        log_vars["rating"].fill_(1.0)
    config = grec_config(losses=LossConfig(weighting="uncertainty"))
    out, labels = _output(heads, {})
    total, parts = multitask_loss(out, labels, heads, log_vars, config)
    expected = parts["task/like"] + parts["task/next_item"] + torch.exp(torch.tensor(-1.0)) * parts["task/rating"] + 1
    torch.testing.assert_close(total, expected)
    with pytest.raises(ValueError, match="no labels for tasks"):
        multitask_loss(out, {}, heads, log_vars, config)


def test_task_sampling_depends_on_seed_and_step_only_and_keeps_model_order():
    names = [f"t{i}" for i in range(6)]
    assert training_tasks(names, None, 0, 3) == (names, 1.0) and training_tasks(names, 6, 0, 3) == (names, 1.0)
    drawn, scale = training_tasks(names, 2, 0, 3)
    assert len(drawn) == 2 and scale == 3.0 and drawn == sorted(drawn, key=names.index)
    assert training_tasks(names, 2, 0, 3) == (drawn, scale)
    assert len({tuple(training_tasks(names, 2, seed, 3)[0]) for seed in range(20)}) > 1


def test_train_only_freezes_everything_else():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    train_only(model, list(model[1].parameters()))
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True]


def test_labelled_collation_adds_the_sampled_negatives_of_the_collators_spec(grec_config):
    spec = grec_config().input
    implicit = TaskSpec("view", "binary", "label_view", implicit=True)
    model = build_model(grec_config())
    model.add_task(implicit)  # the collator follows the model's tasks
    table = pa.table(random_columns(model.config.input, 6))
    batch = LabelledCollator(model.collator, 2, seed=3)(table)
    assert batch.size == 18 and spec.tasks != model.collator.spec.tasks
    expected = model.collate(add_sampled_negatives(table, model.config.input, 2, seed=3))
    for task, labels in expected.labels.items():
        torch.testing.assert_close(batch.labels[task], labels, equal_nan=True)


def test_the_per_task_export_does_not_import_the_model_it_is_taken_from():
    # GRec builds its TaskSubModel; the export module must not need GRec back (an import circle).
    tree = ast.parse((Path(__file__).resolve().parent.parent / "grec" / "export.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported.isdisjoint({"grec.grec_model", "grec.model", "grec.persistence", "grec"})
