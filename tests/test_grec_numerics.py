"""Periodic numeric embeddings: they train, export, save and reload like every other part, and a
model configured with raw numerics keeps the layout models were saved in before the option."""

from __future__ import annotations

import torch

from grec import build_model, load_model, save_model
from grec.config import NumericConfig, RouterConfig
from grec.synthetic import random_columns, synthetic_spec

PERIODIC = NumericConfig(encoding="periodic", frequencies=4, sigma=1.0)


def test_user_and_item_numerics_get_periodic_embeddings_that_learn(grec_config):
    # the synthetic spec has a user numeric (age) and an item numeric (price)
    model = build_model(grec_config(input=synthetic_spec(2), numerics=PERIODIC))
    encoder = model.encoder
    frequencies = [encoder.wide_deep.numeric_embedding.frequencies, encoder.item.numeric_embedding.frequencies]
    batch = model.collate(random_columns(model.config.input, 16))
    model.train()
    model.loss(model(batch), batch)[0].backward()
    for parameter in frequencies:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_periodic_numerics_export_save_and_reload_exactly(grec_config, train_steps, tmp_path):
    model = build_model(grec_config(numerics=PERIODIC, router=RouterConfig(mode="task", num_experts=3, top_k=1)))
    batch = model.collate(random_columns(model.config.input, 6))
    train_steps(model, batch)
    with torch.no_grad():
        full = model(batch).logits
        for task, logits in full.items():
            torch.testing.assert_close(model.export_task(task)(batch), logits, atol=2e-6, rtol=0)
    reloaded = load_model(save_model(model, tmp_path / "model"))
    assert reloaded.config.numerics == PERIODIC
    with torch.no_grad():
        again = reloaded(batch).logits
    for task, logits in full.items():
        assert torch.equal(again[task], logits), task


def test_raw_numerics_keep_the_earlier_saved_layout(grec_config):
    # models saved before numerics.encoding existed hold exactly these tensors, so they still load
    model = build_model(grec_config(input=synthetic_spec(2)))
    assert model.config.numerics.encoding == "raw"
    assert not [name for name in model.state_dict() if "numeric_embedding" in name]
    encoder = model.encoder
    assert encoder.wide_deep.deep[0].in_features == len(encoder.wide_features) * model.config.embedding_dim + 1
