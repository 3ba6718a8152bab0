"""GRec at many tasks: shared-prefix sentences, grouped per-task compute, dropless routing in training,
bounded expert work per example, task sampling."""

from __future__ import annotations

import itertools
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from grec import GRecConfig, LossConfig, RouterConfig, SkillConfig, build_model
from grec.moe import MERGED_TASK_SETS
from grec.skills import SkillAdapter
from grec.synthetic import random_columns, synthetic_spec

TASKS = ["like", "rating", "next_item"]


def _randomize_skills(model) -> None:
    """Skill up-projections start at zero: give every skill a visible effect."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "exclusive_up" in name or "common_up" in name:
                parameter.normal_(0.0, 0.3)


def _full_sentence_reference(model, batch, tasks):
    """The task-sentence formulation before shared prefixes: one whole sentence [task, examples...]
    per (task, example) through the sentence stack, read at the task position. [T, B, d]."""
    encoder = model.sentence_encoder
    examples = model.encode_examples(batch)
    tokens = model.task_tokens(tasks)
    size, n, d = examples.shape
    sentences = torch.cat([tokens[:, None, None, :].expand(len(tasks), size, 1, d),
                           examples.unsqueeze(0).expand(len(tasks), size, n, d)], dim=2)
    sentences = sentences.reshape(len(tasks) * size, 1 + n, d) + encoder.slot_embedding
    return encoder.stack(sentences)[:, 0].view(len(tasks), size, d)


@pytest.mark.parametrize("with_text", [False, True])
def test_shared_prefix_equals_the_full_sentence_with_one_layer(grec_config, with_text):
    model = build_model(grec_config(with_text=with_text, dropout=0.1)).eval()
    batch = model.collate(random_columns(model.config.input, 7))
    with torch.no_grad():
        shared_prefix = model.sentence_encoder(model.encode_examples(batch), model.task_tokens(TASKS))
        torch.testing.assert_close(shared_prefix, _full_sentence_reference(model, batch, TASKS), atol=1e-5, rtol=0)


def test_with_several_layers_a_task_reads_the_examples_but_no_other_task(grec_config):
    model = build_model(grec_config(sentence_layers=3)).eval()
    batch = model.collate(random_columns(model.config.input, 5))
    with torch.no_grad():
        examples = model.encode_examples(batch)
        tokens = model.task_tokens(TASKS)
        together = model.sentence_encoder(examples, tokens)
        for i in range(len(TASKS)):
            alone = model.sentence_encoder(examples, tokens[i:i + 1])
            torch.testing.assert_close(alone[0], together[i], atol=1e-6, rtol=0)
        other = examples.clone()
        other[0, -1] += torch.randn(other.shape[-1])  # changing example 0 changes its sentences only
        changed = model.sentence_encoder(other, tokens)
    assert not torch.allclose(changed[:, 0], together[:, 0])
    torch.testing.assert_close(changed[:, 1:], together[:, 1:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("router", [RouterConfig(mode="task", num_experts=3, top_k=2),
                                    RouterConfig(mode="task-sentence", num_experts=3, top_k=2),
                                    RouterConfig(mode="task", num_experts=3, top_k=1, shared_experts=2)])
def test_no_row_touches_another_tasks_skills(grec_config, router):
    model = build_model(grec_config(router=router)).train()
    _randomize_skills(model)
    batch = model.collate(random_columns(model.config.input, 6))
    out = model(batch)
    out.logits["like"].sum().backward()  # the 'like' rows only
    for name, parameter in model.named_parameters():
        owned_by = name.rsplit(".", 1)[-1]
        if "exclusive" in name or ".mixing." in name:
            touched = parameter.grad is not None and bool(parameter.grad.abs().sum() > 0)
            assert touched == (owned_by == "like"), name


def test_one_skill_draw_per_task_per_forward(grec_config, monkeypatch):
    model = build_model(grec_config(router=RouterConfig(mode="task", num_experts=3, top_k=2))).train()
    calls: dict[int, list[tuple[str, ...]]] = {}
    original = SkillAdapter.mix

    def spy(self, tasks):
        calls.setdefault(id(self), []).append(tuple(tasks))
        return original(self, tasks)

    monkeypatch.setattr(SkillAdapter, "mix", spy)
    model.loss(model(model.collate(random_columns(model.config.input, 4))),
               model.collate(random_columns(model.config.input, 4)))
    adapters = [m for m in model.modules() if isinstance(m, SkillAdapter)]
    assert len(adapters) == 3  # experts' up and down (one bank shared by every expert), tower
    assert all(calls[id(adapter)] == [tuple(TASKS)] for adapter in adapters)


def _many_task_model(num_tasks: int, preferred: callable, **router) -> GRecConfig:
    """T tasks and T experts, d_model = T: task t's token is the unit vector e_t and the router's
    weight makes it prefer the experts `preferred(t)`."""
    config = GRecConfig(input=synthetic_spec(num_tasks, vocab_size=50, sequence_length=4), d_model=num_tasks,
                        num_heads=4, ffn_hidden=16, expert_hidden=8, tower_hidden=8, embedding_dim=8,
                        router=RouterConfig(mode="task", num_experts=num_tasks, top_k=2, **router),
                        skills=SkillConfig(kind="none"))
    model = build_model(config).train()
    with torch.no_grad():
        for t, name in enumerate(model.task_names):
            model.task_tokens.task_embedding[name].copy_(torch.nn.functional.one_hot(torch.tensor(t), num_tasks))
        for parameter in model.task_tokens.descriptor_embedding.values():
            parameter.zero_()
        weight = model.moe.router.project.weight
        weight.zero_()
        for t in range(num_tasks):
            for e in preferred(t):
                weight[e, t] = 5.0
    return model


def test_balanced_tasks_drop_nothing_in_training_at_64_tasks():
    model = _many_task_model(64, lambda t: (t, (t + 1) % 64))  # every expert: exactly 2 tasks
    batch = model.collate(random_columns(model.config.input, 16))
    out = model(batch)
    assert float(out.router_stats.dropped_fraction) == 0.0
    assert (out.router_stats.expert_load.sum(0) == 2 * 16).all()
    sampled = model(batch, tasks=model.task_names[::8])  # a sample of tasks keeps its experts too
    assert float(sampled.router_stats.dropped_fraction) == 0.0


def test_unbalanced_tasks_drop_nothing_in_training():
    model = _many_task_model(64, lambda t: (0, 1))  # every task wants experts 0 and 1
    batch = model.collate(random_columns(model.config.input, 4))
    out = model(batch)
    assert float(out.router_stats.dropped_fraction) == 0.0
    assert out.router_stats.expert_load.sum(0)[:2].tolist() == [64 * 4, 64 * 4]


@pytest.mark.parametrize("mode", ["task", "sentence", "task-sentence"])
def test_training_runs_the_model_that_eval_runs(mode):
    """With the training-only noise off (router jitter, dropout; CGC-LoRA skills have no sampled
    allocation) a training-mode forward equals the eval-mode forward: no expert work is dropped."""
    config = GRecConfig(input=synthetic_spec(64, vocab_size=50, sequence_length=4), d_model=16, num_heads=2,
                        ffn_hidden=16, expert_hidden=16, tower_hidden=8, embedding_dim=8,
                        router=RouterConfig(mode=mode, num_experts=64, top_k=2, jitter=0.0),
                        skills=SkillConfig(kind="cgc_lora", num_common=3, num_exclusive=1, rank=2))
    model = build_model(config)
    _randomize_skills(model)
    batch = model.collate(random_columns(config.input, 16))
    with torch.no_grad():
        trained = model.train()(batch)
        evaluated = model.eval()(batch)
    assert float(trained.router_stats.dropped_fraction) == 0.0
    for task in model.task_names:
        torch.testing.assert_close(trained.logits[task], evaluated.logits[task], atol=1e-5, rtol=0)


def test_the_t64_model_drops_nothing_at_initialisation_or_after_training():
    """The task-scaling benchmark's model at T=64 (E=64, top-2, C-Poly A=3 B=1 r=2): no assignment is
    dropped at initialisation nor after 200 optimizer steps, whose router is no longer balanced."""
    config = GRecConfig(input=synthetic_spec(64, vocab_size=50, sequence_length=4), d_model=16, num_heads=2,
                        ffn_hidden=16, expert_hidden=16, tower_hidden=8, embedding_dim=8,
                        router=RouterConfig(mode="task", num_experts=64, top_k=2),
                        skills=SkillConfig(kind="cpoly", num_common=3, num_exclusive=1, rank=2))
    model = build_model(config).train()
    batches = [model.collate(random_columns(config.input, 16, seed=seed)) for seed in range(8)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    dropped, loads = [], []
    for step in range(200):
        batch = batches[step % len(batches)]
        out = model(batch)
        dropped.append(float(out.router_stats.dropped_fraction))
        loads.append(out.router_stats.expert_load.sum(0))
        loss, _ = model.loss(out, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert dropped == [0.0] * 200
    assert int(loads[-1].max()) > 2 * 16  # the trained router sends more than an even share to some expert


def test_a_capacity_is_opt_in_and_never_with_task_routing():
    with pytest.raises(ValueError, match=r"drops the expert assignments .* add router.allow_drops: true"):
        RouterConfig(mode="sentence", capacity_factor=1.25)
    with pytest.raises(ValueError, match=r"router.mode 'task'.*saves no memory.*delete router.capacity_factor"):
        RouterConfig(mode="task", capacity_factor=1.25, allow_drops=True)
    with pytest.raises(ValueError, match="allow_drops: true without router.capacity_factor"):
        RouterConfig(mode="sentence", allow_drops=True)
    assert RouterConfig(mode="sentence", capacity_factor=1.25, allow_drops=True).capacity_factor == 1.25
    assert RouterConfig().capacity_factor is None


def _marginal_flops_per_task(config_for, size: int = 32) -> float:
    """FLOPs an all-tasks forward adds per (example, task) from T=8 to T=32."""
    flops = {}
    for num_tasks in (8, 32):
        model = build_model(config_for(num_tasks)).eval()
        batch = model.collate(random_columns(model.config.input, size))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(batch)
        flops[num_tasks] = counter.get_total_flops()
    return (flops[32] - flops[8]) / (24 * size)


def test_shared_experts_bound_the_expert_work_of_an_example():
    d, hidden = 32, 128
    one_expert = 2 * 2 * d * hidden  # up and down matmuls, 2 FLOPs per multiply-add

    def config(num_tasks: int, **router) -> GRecConfig:
        return GRecConfig(input=synthetic_spec(num_tasks, vocab_size=50, sequence_length=4), d_model=d,
                          num_heads=4, ffn_hidden=32, expert_hidden=hidden, tower_hidden=16, embedding_dim=8,
                          router=RouterConfig(mode="task", num_experts=8, **router))

    routed = _marginal_flops_per_task(lambda t: config(t, top_k=2))
    bounded = _marginal_flops_per_task(lambda t: config(t, top_k=0, shared_experts=2))
    assert routed > 2 * one_expert  # every added task runs its k=2 experts on every example
    assert bounded < one_expert / 2  # an added task runs no expert: only its gates, skills and tower


def test_task_sampling_draws_the_same_tasks_on_every_rank_and_keeps_the_loss_unbiased(grec_config):
    spec_tasks = [f"task{i}" for i in range(4)]
    config = GRecConfig(input=synthetic_spec(4, vocab_size=30, sequence_length=3), d_model=16, num_heads=2,
                        ffn_hidden=16, expert_hidden=16, tower_hidden=8, embedding_dim=8,
                        losses=LossConfig(tasks_per_step=2))
    model = build_model(config).train()
    first, scale = model.training_tasks(step=7)
    assert len(first) == 2 and scale == 2.0 and model.training_tasks(step=7) == (first, scale)
    assert {t for step in range(50) for t in model.training_tasks(step)[0]} == set(spec_tasks)
    # Over every K-subset the scaled loss averages to the all-tasks loss.
    batch = model.collate(random_columns(config.input, 8))
    model.eval()
    with torch.no_grad():
        out = model(batch)
        full, _ = model.loss(out, batch)
        subsets = list(itertools.combinations(spec_tasks, 2))
        sampled = [model.loss(model(batch, tasks=list(s)), batch, task_scale=2.0)[0] for s in subsets]
    aux = sum(w * v for w, v in zip((config.router.load_balance_weight, config.router.z_loss_weight),
                                    out.aux_losses.values()))
    torch.testing.assert_close(torch.stack(sampled).mean() - aux, full - aux, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="tasks_per_step is 5"):
        GRecConfig(input=config.input, losses=LossConfig(tasks_per_step=5))


def test_per_sentence_dispatch_equals_running_each_expert_on_its_rows(grec_config):
    model = build_model(grec_config(router=RouterConfig(mode="sentence", num_experts=3, top_k=2),
                                    skills=SkillConfig(kind="none"))).eval()
    moe = model.moe
    s = torch.randn(3, 5, 16)
    tokens = torch.randn(3, 16)
    with torch.no_grad():
        y, routing, _ = moe(s, tokens, torch.arange(3), TASKS, None)
        bank = moe.routed
        expected = s.clone()
        for t, b in itertools.product(range(3), range(5)):
            for j in range(2):
                e = int(routing.expert_index[t, b, j])
                h = torch.nn.functional.gelu(bank.up_weight[e] @ s[t, b] + bank.up_bias[e])
                expected[t, b] += routing.gates[t, b, j] * (bank.down_weight[e] @ h + bank.down_bias[e])
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=0)


def test_scoring_tasks_together_equals_scoring_each_alone(grec_config):
    model = build_model(grec_config(router=RouterConfig(mode="task", num_experts=3, top_k=2, shared_experts=1)))
    _randomize_skills(model)
    model.eval()
    batch = model.collate(random_columns(model.config.input, 6))
    with torch.no_grad():
        together = model(batch).logits
        for task in TASKS:
            torch.testing.assert_close(model(batch, tasks=[task]).logits[task], together[task], atol=1e-6, rtol=0)


def test_inference_keeps_merged_expert_weights_until_a_weight_changes():
    """Task routing at inference keeps each task set's merged expert weights: outputs equal the
    uncached computation, and after an optimizer step (or loading other weights) they follow the
    new weights."""
    model = build_model(GRecConfig(input=synthetic_spec(8, vocab_size=50, sequence_length=4), d_model=16,
                                   num_heads=2, ffn_hidden=16, expert_hidden=16, tower_hidden=8, embedding_dim=8,
                                   router=RouterConfig(mode="task", num_experts=4, top_k=2)))
    _randomize_skills(model)
    batch = model.collate(random_columns(model.config.input, 6))

    def uncached():
        with torch.enable_grad():
            return {t: v.detach() for t, v in model(batch).logits.items()}

    def cached():
        with torch.no_grad():
            return model(batch).logits

    model.eval()
    first = cached()
    assert len(model.moe._merged_by_tasks) == 1  # noqa: SLF001
    for task, logits in cached().items():
        torch.testing.assert_close(logits, uncached()[task], atol=1e-6, rtol=0)
        assert torch.equal(logits, first[task])
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    loss, _ = model.loss(model.train()(batch), batch)
    loss.backward()
    optimizer.step()
    model.eval()
    moved = cached()
    for task, logits in moved.items():
        torch.testing.assert_close(logits, uncached()[task], atol=1e-6, rtol=0)
        assert not torch.equal(logits, first[task])
    other = build_model(model.config)
    model.load_state_dict(other.state_dict())  # in eval mode: the version counters tell
    for task, logits in cached().items():
        torch.testing.assert_close(logits, uncached()[task], atol=1e-6, rtol=0)



def test_inference_from_many_threads_at_once_gives_each_call_its_own_answer():
    """MLflow's scoring server runs the pyfunc's predict in a thread pool: calls for more task sets
    than the merged-weights cache keeps, at once, evict each other's entries and still answer."""
    model = build_model(GRecConfig(input=synthetic_spec(8, vocab_size=50, sequence_length=4), d_model=16,
                                   num_heads=2, ffn_hidden=16, expert_hidden=16, tower_hidden=8, embedding_dim=8,
                                   router=RouterConfig(mode="task", num_experts=4, top_k=2))).eval()
    _randomize_skills(model)
    batch = model.collate(random_columns(model.config.input, 6))
    task_sets = [list(tasks) for size in (1, 2, 3) for tasks in itertools.combinations(model.task_names, size)]
    assert len(task_sets) > MERGED_TASK_SETS
    with torch.no_grad():
        expected = [model.predict(batch, tasks) for tasks in task_sets]

    def answer(index: int) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return model.predict(batch, task_sets[index % len(task_sets)])

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns between any two steps, as on a loaded server
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(answer, range(40 * len(task_sets))))
    finally:
        sys.setswitchinterval(interval)
    for index, scores in enumerate(answers):
        for task, values in expected[index % len(task_sets)].items():
            torch.testing.assert_close(scores[task], values, atol=1e-6, rtol=0)