"""Per-task sub-models, adding a task to a trained model, and save / load."""

from __future__ import annotations

import json

import pytest
import torch

from grec import RouterConfig, SkillConfig, TaskSpec, build_model, count_parameters, load_model, save_model
from grec.synthetic import random_columns

TASKS = ["like", "rating", "next_item"]


@pytest.mark.parametrize("top_k, shared, skills", [
    (1, 0, SkillConfig(kind="cpoly")), (2, 0, SkillConfig(kind="cpoly")), (2, 0, SkillConfig(kind="cgc_lora")),
    (2, 0, SkillConfig(kind="cpoly", share_across_experts=False)), (1, 2, SkillConfig(kind="cpoly")),
    (0, 2, SkillConfig(kind="cpoly")), (0, 1, SkillConfig(kind="none")),
])
def test_sub_model_equals_full_model(grec_config, train_steps, top_k, shared, skills):
    model = build_model(grec_config(router=RouterConfig(mode="task", num_experts=4, top_k=top_k,
                                                        shared_experts=shared), skills=skills))
    batch = model.collate(random_columns(model.config.input, 6))
    train_steps(model, batch)
    full = model(batch)
    for task in TASKS:
        sub = model.export_task(task)
        assert len(sub.routed or []) == top_k and len(sub.shared or []) == shared
        with torch.no_grad():
            alone = sub(batch)
        torch.testing.assert_close(alone, full.logits[task], atol=2e-6, rtol=0)
        torch.testing.assert_close(alone, model(batch, tasks=[task]).logits[task], atol=2e-6, rtol=0)
        torch.testing.assert_close(sub.predict(batch), model.predict(batch, [task])[task], atol=2e-6, rtol=0)
    if not shared:  # its own weights (k merged routed experts, tower, head) are a fraction of the MoE layer
        assert sub.own_parameters() < count_parameters(model.moe)


def test_export_needs_task_routing(grec_config):
    model = build_model(grec_config(router=RouterConfig(mode="task-sentence", num_experts=2)))
    with pytest.raises(ValueError, match="needs router.mode 'task'"):
        model.export_task("like")
    with pytest.raises(ValueError, match="architecture 'grec'"):
        build_model(grec_config(architecture="mmoe")).export_task("like")


@pytest.mark.parametrize("mode", ["task", "task-sentence"])
def test_adding_a_task_leaves_old_tasks_bit_identical(grec_config, train_steps, mode):
    model = build_model(grec_config(router=RouterConfig(mode=mode, num_experts=3, top_k=2)))
    columns = random_columns(model.config.input, 8)
    train_steps(model, model.collate(columns))
    with torch.no_grad():
        before = model(model.collate(columns), tasks=TASKS).logits

    task = TaskSpec("click", "binary", "label_click", descriptors={"type": "engagement", "scenario": "books"})
    trainable = model.add_task(task)
    assert model.config.task_names == [*TASKS, "click"]
    assert sum(p.numel() for p in trainable) == model.parameters_per_task(
        task) == count_parameters(model, trainable_only=True)
    columns["label_click"] = (columns["label_like"] + 1) % 2
    batch = model.collate(columns)
    optimizer = torch.optim.AdamW(trainable, lr=0.05, weight_decay=0.1)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        out = model(batch)  # all tasks, the new one included
        loss, _ = model.loss(out, batch)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = model(model.collate(columns), tasks=TASKS).logits
        new = model(batch, tasks=["click"]).logits["click"]
    for name in TASKS:
        assert torch.equal(before[name], after[name]), name
    assert new.shape == (8,)


@pytest.mark.parametrize("architecture", ["grec", "shared_bottom", "mmoe", "ple"])
def test_saved_model_reloads_with_identical_outputs(grec_config, train_steps, tmp_path, architecture):
    model = build_model(grec_config(with_text=True, architecture=architecture, skills=SkillConfig(kind="cgc_lora")))
    batch = model.collate(random_columns(model.config.input, 5))
    train_steps(model, batch, steps=1)
    with torch.no_grad():
        expected = model(batch).logits
    path = save_model(model, tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((path / "config.json").read_text())["config"]["text"]["backbone"] == "tiny_bert"
    reloaded = load_model(path)
    assert not reloaded.training
    assert reloaded.config == model.config
    with torch.no_grad():
        got = reloaded(reloaded.collate(random_columns(model.config.input, 5))).logits
    for task, logits in expected.items():
        assert torch.equal(got[task], logits), task


def test_model_with_an_added_task_saves_and_reloads(grec_config, tmp_path):
    model = build_model(grec_config()).eval()
    model.add_task(TaskSpec("click", "binary", "label_click"))
    batch = model.collate(random_columns(model.config.input, 4))
    reloaded = load_model(save_model(model, tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(reloaded(batch).logits["click"], model(batch).logits["click"])


def test_load_refuses_other_files(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a grec model config"):
        load_model(tmp_path)


def test_a_model_saved_before_dropless_training_still_loads(grec_config, tmp_path):
    """Versions registered before training was dropless saved `router.capacity_factor` (1.25) without
    the opt-in this grec asks for: they load (capacity is training-only) with the same outputs."""
    model = build_model(grec_config()).eval()
    path = save_model(model, tmp_path / "m")
    document = json.loads((path / "config.json").read_text())
    router = document["config"]["router"]
    del router["allow_drops"]  # the key did not exist then
    router["capacity_factor"] = 1.25
    (path / "config.json").write_text(json.dumps(document))
    batch = model.collate(random_columns(model.config.input, 4))
    reloaded = load_model(path)
    assert reloaded.config.router.capacity_factor is None
    with torch.no_grad():
        assert torch.equal(reloaded(batch).logits["like"], model(batch).logits["like"])
