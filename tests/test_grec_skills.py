"""C-Poly / CGC-LoRA skills: merge equivalence, allocation, parameters per task."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grec import RouterConfig, SkillConfig, TaskSpec, build_model, count_parameters, parameters_added_by_task
from grec.skills import SkillAdapter, SkilledLinear

TASKS = ["a", "b", "c"]


def _randomized(adapter: SkillAdapter) -> SkillAdapter:
    with torch.no_grad():  # up-projections start at zero: give every skill a real effect
        for parameter in adapter.parameters():
            parameter.normal_(0.0, 0.5)
    return adapter


@pytest.mark.parametrize("kind", ["cpoly", "cgc_lora"])
@pytest.mark.parametrize("common, exclusive", [(3, 1), (2, 2), (0, 1), (2, 0)])
def test_merged_equals_unmerged(kind, common, exclusive):
    torch.manual_seed(0)
    config = SkillConfig(kind=kind, num_common=common, num_exclusive=exclusive, rank=2)
    adapter = _randomized(SkillAdapter(6, 5, TASKS, config))
    layer = SkilledLinear(nn.Linear(6, 5), adapter).eval()
    x = torch.randn(3, 4, 6)  # task-major: 4 rows of each task
    mixed = layer(x, adapter.mix(TASKS))  # every task in one grouped pass
    for i, task in enumerate(TASKS):
        merged = layer.merged(task)
        assert isinstance(merged, nn.Linear)
        torch.testing.assert_close(merged(x[i]), mixed[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(layer(x[i:i + 1], adapter.mix([task]))[0], mixed[i], atol=1e-5, rtol=0)


def test_allocation_is_normalized_and_sampled_only_in_training():
    torch.manual_seed(0)
    adapter = _randomized(SkillAdapter(4, 4, TASKS, SkillConfig(kind="cpoly", num_common=3)))
    allocation = adapter.allocation_matrix(TASKS)
    assert allocation.shape == (3, 3)
    torch.testing.assert_close(allocation.sum(1), torch.ones(3), atol=1e-5, rtol=0)
    expected = torch.sigmoid(torch.stack([adapter.mixing[t][0] for t in TASKS]))
    torch.testing.assert_close(allocation, expected / expected.sum(1, keepdim=True), atol=1e-5, rtol=1e-5)
    adapter.train()
    first, second = adapter.mix(TASKS).common, adapter.mix(TASKS).common
    assert not torch.equal(first, second)  # relaxed Bernoulli samples
    torch.testing.assert_close(first.sum(-1), torch.ones(3, 1), atol=1e-5, rtol=0)


def test_cgc_lora_gate_is_a_softmax_over_common_and_exclusive():
    adapter = _randomized(SkillAdapter(4, 4, TASKS, SkillConfig(kind="cgc_lora", num_common=2, num_exclusive=1)))
    mix = adapter.mix(TASKS)
    torch.testing.assert_close(mix.common.sum(-1) + mix.exclusive.sum(-1), torch.ones(3, 1), atol=1e-6, rtol=0)


def test_grec_exposes_allocation_matrices(grec_config):
    model = build_model(grec_config())
    matrices = model.allocation_matrices()
    assert set(matrices) == {"moe.experts.up", "moe.experts.down", "tower"}
    assert all(m.shape == (3, 3) for m in matrices.values())


@pytest.mark.parametrize("skills", [
    SkillConfig(kind="cpoly", num_common=3, num_exclusive=1, rank=2),
    SkillConfig(kind="cgc_lora", num_common=2, num_exclusive=2, rank=1),
    SkillConfig(kind="cpoly", share_across_experts=False),
])
def test_parameters_added_per_task_match_the_formula(grec_config, skills):
    config = grec_config(skills=skills, router=RouterConfig(num_experts=4, top_k=2))
    model = build_model(config)
    before = count_parameters(model)
    task = TaskSpec("click", "binary", "label_click", descriptors={"type": "engagement"})
    model.add_task(task)
    added = count_parameters(model) - before
    d, h, tower, r = 16, 16, 8, skills.rank
    mixing = skills.num_common if skills.kind == "cpoly" else skills.num_common + skills.num_exclusive
    per_adapter = lambda i, o: skills.num_exclusive * r * (i + o) + mixing  # noqa: E731
    banks = 1 if skills.share_across_experts else 4
    expected = d + banks * (per_adapter(d, h) + per_adapter(h, d)) + per_adapter(d, tower) + (tower + 1)
    assert added == expected == parameters_added_by_task(config, task)
    # A descriptor value no task had before costs one more embedding.
    new_scenario = TaskSpec("share", "binary", "label_share", descriptors={"scenario": "books"})
    assert parameters_added_by_task(model.config, new_scenario) == expected + d


def test_a_task_added_like_another_starts_from_its_predictions_and_trains_alone(grec_config, train_steps):
    import pyarrow as pa

    from grec.synthetic import random_columns

    model = build_model(grec_config(skills=SkillConfig(kind="cpoly", num_common=3, num_exclusive=1, rank=2)))
    batch = model.collate(pa.table(random_columns(model.config.input, 32)))
    train_steps(model, batch)  # every task's own parameters away from their initial values
    like = model.config.input.tasks[0]
    new = TaskSpec("like_again", "binary", "label_like_again", descriptors=dict(like.descriptors))
    fresh = build_model(model.config)
    fresh.load_state_dict(model.state_dict())
    fresh.add_task(new)
    trainable = model.add_task(new, like=like.name)

    rows = pa.table(random_columns(model.config.input, 32))
    predicted = model.predict(model.collate(rows), [like.name, new.name])
    torch.testing.assert_close(predicted[new.name], predicted[like.name], rtol=0, atol=1e-6)
    assert not torch.allclose(fresh.predict(fresh.collate(rows), [new.name])[new.name], predicted[like.name])
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in trainable}
    with pytest.raises(ValueError, match="a regression task cannot start a binary task"):
        build_model(model.config).add_task(TaskSpec("x", "binary", "label_x"), like="rating")
    with pytest.raises(ValueError, match="no such task"):
        build_model(model.config).add_task(TaskSpec("y", "binary", "label_y"), like="nope")
