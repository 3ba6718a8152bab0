"""GRec and the baselines: shapes in every mode, gradients, routing, auxiliary losses, text cache."""

from __future__ import annotations

import pytest
import torch

from grec import LossConfig, RouterConfig, SkillConfig, build_model
from grec.moe import SparseMoE
from grec.router import load_balancing_loss, within_capacity
from grec.synthetic import random_columns

ROWS = 5
TASKS = ["like", "rating", "next_item"]


def _check_outputs(out, tasks):
    assert list(out.logits) == tasks
    for task in tasks:
        expected = (ROWS, 25) if task == "next_item" else (ROWS,)
        assert out.logits[task].shape == expected
        assert torch.isfinite(out.logits[task]).all()


@pytest.mark.parametrize("mode", ["task", "sentence", "task-sentence"])
@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("skills", ["cpoly", "cgc_lora", "none"])
def test_grec_shapes_in_every_mode(grec_config, mode, top_k, skills):
    model = build_model(grec_config(router=RouterConfig(mode=mode, num_experts=3, top_k=top_k),
                                    skills=SkillConfig(kind=skills)))
    batch = model.collate(random_columns(model.config.input, ROWS))
    for training in (True, False):
        model.train(training)
        out = model(batch)
        _check_outputs(out, TASKS)
        stats = out.router_stats
        assert stats.tasks == TASKS and stats.expert_load.shape == (3, 3)
        # dropless in training as at eval: every sentence reaches its k experts
        assert stats.expert_load.sum(1).tolist() == [ROWS * top_k] * 3
        assert float(stats.dropped_fraction) == 0.0
        assert set(out.aux_losses) == {"load_balance", "router_z"}
    single = model(batch, tasks=["rating"])
    _check_outputs(single, ["rating"])
    assert single.router_stats.expert_load.shape == (1, 3)


@pytest.mark.parametrize("architecture", ["shared_bottom", "mmoe", "ple"])
def test_baselines_shapes(grec_config, architecture):
    model = build_model(grec_config(architecture=architecture)).eval()
    batch = model.collate(random_columns(model.config.input, ROWS))
    _check_outputs(model(batch), TASKS)
    _check_outputs(model(batch, tasks=["next_item", "like"]), ["next_item", "like"])
    with pytest.raises(ValueError, match="unknown task"):
        model(batch, tasks=["click"])


@pytest.mark.parametrize("architecture", ["grec", "shared_bottom", "mmoe", "ple"])
def test_gradients_reach_every_trainable_parameter(grec_config, architecture):
    config = grec_config(with_text=True, freeze_text=False, architecture=architecture,
                         router=RouterConfig(mode="task-sentence", num_experts=2, top_k=2),
                         losses=LossConfig(weighting="uncertainty", sampled_softmax={"next_item": 6}))
    model = build_model(config).train()
    batch = model.collate(random_columns(config.input, 8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    # Two steps: LoRA up-projections start at zero, so their down-projections only get a gradient
    # once the first step has moved them.
    for _ in range(2):
        optimizer.zero_grad()
        loss, parts = model.loss(model(batch), batch)
        loss.backward()
        optimizer.step()
    assert {"task/like", "task/rating", "task/next_item"} <= set(parts)
    silent = [name for name, p in model.named_parameters()
              if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert silent == []


def test_every_expert_gets_a_gradient_even_when_no_sentence_routes_to_it(grec_config):
    # Data-parallel training (DeepSpeed ZeRO, DDP) reduces the same gradient buckets on every rank:
    # an expert that one rank's batch skipped must still have a (zero) gradient there.
    model = build_model(grec_config(router=RouterConfig(mode="task", num_experts=6, top_k=1))).train()
    batch = model.collate(random_columns(model.config.input, 4))
    loss, _ = model.loss(model(batch), batch)
    loss.backward()
    assert int((model(batch).router_stats.expert_load.sum(0) == 0).sum()) >= 3  # 3 tasks, 6 experts
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_frozen_text_encoder_gets_no_gradient(grec_config):
    model = build_model(grec_config(with_text=True))
    assert not any(p.requires_grad for p in model.encoder.text_encoder.backbone.parameters())


@pytest.mark.parametrize("mode", ["task", "sentence", "task-sentence"])
def test_eval_routing_is_deterministic_and_jitter_only_in_training(grec_config, mode):
    model = build_model(grec_config(router=RouterConfig(mode=mode, num_experts=3, top_k=2, jitter=0.3)))
    batch = model.collate(random_columns(model.config.input, ROWS))
    model.eval()
    first, second = model(batch), model(batch)
    for task in TASKS:
        assert torch.equal(first.logits[task], second.logits[task])
    assert torch.equal(first.router_stats.router_probs, second.router_stats.router_probs)
    model.train()
    assert not torch.equal(model(batch).router_stats.router_probs, model(batch).router_stats.router_probs)


def test_task_routing_depends_on_the_task_only(grec_config):
    model = build_model(grec_config(router=RouterConfig(mode="task", num_experts=3, top_k=1))).eval()
    stats = model(model.collate(random_columns(model.config.input, ROWS))).router_stats
    # Every sentence of a task goes to the same expert.
    assert ((stats.expert_load == ROWS).sum(1) == 1).all()


def _one_expert_moe(**router) -> SparseMoE:
    """Per-sentence routing where every sentence prefers expert 0 of 2."""
    torch.manual_seed(0)
    moe = SparseMoE(8, 16, ["a"], RouterConfig(mode="sentence", num_experts=2, top_k=1, jitter=0.0, **router),
                    SkillConfig(kind="none"))
    with torch.no_grad():
        moe.router.project.weight.zero_()
        moe.router.project.weight[0] = 1.0
    return moe


def test_an_unbalanced_router_drops_nothing_in_training_by_default():
    moe = _one_expert_moe()
    x = torch.rand(1, 70, 8) + 0.1  # one task, 70 sentences: three blocks of one expert
    tokens, requested = torch.zeros(1, 8), torch.tensor([0])
    moe.train()
    y, routing, stats = moe(x, tokens, requested, ["a"], None)
    assert routing.kept.all() and float(stats.dropped_fraction) == 0.0
    assert stats.expert_load.tolist() == [[70.0, 0.0]]
    moe.eval()
    torch.testing.assert_close(moe(x, tokens, requested, ["a"], None)[0], y, atol=1e-6, rtol=0)
    reference = x + routing.gates[..., :1] * _expert(moe, 0, x)
    torch.testing.assert_close(y, reference, atol=1e-5, rtol=0)


def _expert(moe: SparseMoE, e: int, x: torch.Tensor) -> torch.Tensor:
    bank = moe.routed
    h = torch.nn.functional.gelu(x @ bank.up_weight[e].T + bank.up_bias[e])
    return h @ bank.down_weight[e].T + bank.down_bias[e]


def test_overflowing_sentences_skip_the_expert_and_keep_the_residual_when_capacity_is_opted_in():
    moe = _one_expert_moe(capacity_factor=0.5, allow_drops=True)
    x = torch.rand(1, 8, 8) + 0.1  # one task, 8 sentences
    tokens, requested = torch.zeros(1, 8), torch.tensor([0])
    moe.train()
    y, routing, stats = moe(x, tokens, requested, ["a"], None)
    capacity = moe.router.capacity(8)  # ceil(0.5 * 8 sentences * top-1 / 2 experts) = 2
    assert capacity == 2
    assert routing.kept[0, :, 0].tolist() == [True] * 2 + [False] * 6  # earlier sentences first
    assert torch.equal(y[0, 2:], x[0, 2:])
    assert not torch.allclose(y[0, :2], x[0, :2])
    assert stats.expert_load.tolist() == [[2.0, 0.0]]
    assert float(stats.dropped_fraction) == pytest.approx(0.75)
    moe.eval()  # no capacity at eval
    assert moe(x, tokens, requested, ["a"], None)[1].kept.all()


def test_second_choices_fill_after_first_choices():
    expert_index = torch.tensor([[0, 1], [1, 0]])  # capacity 1 per expert
    assert within_capacity(expert_index, 2, 1).tolist() == [[True, False], [True, False]]
    assert within_capacity(torch.tensor([[0], [0], [1], [0]]), 2, 2).tolist() == [[True], [True], [True], [False]]


def test_load_balancing_loss_is_one_when_uniform():
    probs = torch.full((4, 2), 0.5)
    assert float(load_balancing_loss(probs, torch.tensor([[0], [1], [0], [1]]))) == pytest.approx(1.0)
    assert float(load_balancing_loss(torch.tensor([[1.0, 0.0]] * 4), torch.zeros(4, 1, dtype=torch.long))) == 2.0


def test_predict_gives_probabilities_and_values(grec_config):
    model = build_model(grec_config()).train()
    batch = model.collate(random_columns(model.config.input, ROWS))
    scores = model.predict(batch, tasks=["like", "next_item", "rating"])
    assert model.training  # predict restores the mode
    assert ((scores["like"] >= 0) & (scores["like"] <= 1)).all()
    assert torch.allclose(scores["next_item"].sum(-1), torch.ones(ROWS))
    assert scores["rating"].shape == (ROWS,)


def test_every_text_is_encoded_once_in_eval(grec_config):
    model = build_model(grec_config(with_text=True, freeze_text=False)).eval()
    text_encoder = model.encoder.text_encoder
    columns = random_columns(model.config.input, 6)
    columns["title"] = ["red dress", "blue shirt", "red dress", "", "blue shirt", "new film"]  # item text
    columns["query"] = ["dress", "dress", "shirt", "dress", "", ""]  # per-row text
    batch = model.collate(columns)
    first = model(batch).logits["like"]
    assert (text_encoder.cache_misses, text_encoder.cache_hits) == (4 + 3, 2 + 3)
    second = model(batch).logits["like"]
    assert (text_encoder.cache_misses, text_encoder.cache_hits) == (7, 5 + 12)
    assert torch.allclose(first, second, atol=1e-6)
    model.train()  # a trainable encoder may change: the cache is dropped and not used
    model(batch)
    assert text_encoder.cache_misses == 7 and len(text_encoder._cache) == 0


def test_sparse_arch_is_separate_and_tables_are_listed(grec_config):
    model = build_model(grec_config())
    tables = {t.name: t for t in model.embedding_tables()}
    assert set(tables) == {"t_user_id", "t_item_id", "t_genres", "seq_item_id"}
    assert tables["t_user_id"].num_embeddings == 30 and tables["t_user_id"].embedding_dim == 8
    assert tables["seq_item_id"].kind == "sequence" and tables["seq_item_id"].features == ("hist_item_id",)
    batch = model.collate(random_columns(model.config.input, ROWS))
    pooled, per_position = model.sparse_arch(batch.categorical, batch.sequences)
    assert pooled["genres"].shape == (ROWS, 8) and per_position["hist_item_id"].shape == (ROWS * 5, 8)
    sparse_ids = {id(p) for p in model.sparse_arch.parameters()}
    assert sum(t.num_parameters for t in tables.values()) == sum(
        p.numel() for p in model.parameters() if id(p) in sparse_ids)


def test_rows_sharing_a_history_run_the_sequence_stack_once(grec_config, monkeypatch):
    # The candidates of one request share the user's history: the stack encodes it once.
    from grec.transformer import SequenceEncoder

    model = build_model(grec_config()).eval()
    columns = random_columns(model.config.input, 8)
    columns["hist_item_id"] = [columns["hist_item_id"][0]] * 6 + [columns["hist_item_id"][1]] * 2
    rows_encoded = []
    original = SequenceEncoder.forward
    monkeypatch.setattr(SequenceEncoder, "forward",
                        lambda self, embeddings, mask, ids=None: rows_encoded.append(len(embeddings))
                        or original(self, embeddings, mask, ids))
    batch = model.collate(columns)
    with torch.no_grad():
        together = model(batch).logits
    assert rows_encoded == [2]
    for row in range(8):
        alone = model.collate({name: values[row:row + 1] for name, values in columns.items()})
        with torch.no_grad():
            single = model(alone).logits
        for task in TASKS:
            torch.testing.assert_close(single[task][0], together[task][row], atol=1e-5, rtol=0)


def test_a_history_read_at_its_most_recent_position_equals_the_full_stack_there():
    """sequence_readout 'last' runs the last block for the most recent position only: the same
    token as the whole stack read at that position (left-padded histories; no history gives 0)."""
    from grec.transformer import SequenceEncoder

    torch.manual_seed(0)
    encoder = SequenceEncoder(8, 2, 16, 4, 32, dropout=0.0, readout="last").eval()
    embeddings = torch.randn(5, 7, 8)
    mask = torch.ones(5, 7, dtype=torch.bool)
    mask[1, :3] = False  # a short history
    mask[2] = False  # no history
    with torch.no_grad():
        full = encoder.stack(encoder.project(embeddings), mask)[:, -1] * mask.any(1, keepdim=True)
        torch.testing.assert_close(encoder(embeddings, mask), full, atol=1e-6, rtol=0)
        assert encoder(embeddings, mask)[2].abs().max() == 0


def test_a_last_position_readout_needs_a_block(grec_config):
    with pytest.raises(ValueError, match="sequence_readout 'last' .* set sequence_layers >= 1"):
        grec_config(sequence_layers=0, sequence_readout="last")
    model = build_model(grec_config(sequence_layers=1, sequence_readout="last"))
    _check_outputs(model(model.collate(random_columns(model.config.input, ROWS))), TASKS)


def test_a_mean_pooled_history_is_computed_once_per_item_with_the_same_result():
    """Without a block the history token is the masked mean of norm(project(embedding)) per position;
    computing it once per distinct item gives the same token and the same embedding gradients."""
    from grec.transformer import SequenceEncoder

    torch.manual_seed(0)
    encoder = SequenceEncoder(8, 0, 16, 4, 32)
    ids = torch.randint(1, 6, (7, 9))
    ids[0, :4] = 0  # left padding
    ids[1] = 0  # no history
    table = torch.randn(6, 8, requires_grad=True)
    by_position = encoder(table[ids], ids != 0)  # the reference: every position projected
    by_item = encoder(table[ids], ids != 0, ids)
    torch.testing.assert_close(by_item, by_position, atol=1e-6, rtol=0)
    grad_position = torch.autograd.grad(by_position.square().sum(), table)[0]
    grad_item = torch.autograd.grad(by_item.square().sum(), table)[0]
    torch.testing.assert_close(grad_item, grad_position, atol=1e-5, rtol=0)
