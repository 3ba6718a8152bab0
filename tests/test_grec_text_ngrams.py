"""The wide part for text (hashed word-piece 1-2 gram bags): what it counts, that it learns which
words decide a label, and that it exports, saves and reloads like every other part; a model without
it keeps the layout models were saved in before the option."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from grec import build_model, load_model, save_model
from grec.config import RouterConfig
from grec.ngrams import hashed_ngrams
from grec.synthetic import random_columns


def test_ngrams_count_unigrams_and_ordered_bigrams_and_skip_padding():
    ids = torch.tensor([[5, 7, 0], [7, 5, 9]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    grams, weights = hashed_ngrams(ids, mask, buckets=1 << 20)
    # row 0: unigrams 5, 7 and bigram (5, 7); its pad and the bigram into the pad weigh nothing
    assert torch.allclose(weights[0], torch.tensor([1, 1, 0, 1, 0]) / math.sqrt(3))
    assert torch.allclose(weights[1], torch.ones(5) / math.sqrt(5))  # every row's weights have norm 1
    assert grams[0, 2] != grams[1, 3]  # (5, 7) and (7, 5) are different bigrams
    assert grams.max() < 1 << 20 and grams.min() >= 0


def test_the_bag_learns_which_word_decides_the_label(grec_config):
    # Every other input is noise; the label is whether the query says "good" or "bad".
    model = build_model(grec_config(with_text=True, ngram_buckets=4096))
    columns = random_columns(model.config.input, 256, seed=0)
    positive = np.random.default_rng(0).random(256) < 0.5
    columns["query"] = ["a good one" if p else "a bad one" for p in positive]
    binary = [t for t in model.config.input.tasks if t.kind == "binary"]
    for task in binary:
        columns[task.label] = positive.astype(np.float32)
    batch = model.collate(columns)
    bag = model.encoder.ngram_bags["query"].bag.weight
    before = bag.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        model.loss(model(batch), batch)[0].backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        logits = model(batch).logits
    for task in binary:
        assert roc_auc_score(positive, logits[task.name].numpy()) > 0.99, task.name
    moved = (bag.detach() - before).abs().sum(dim=1)
    # only the queries' n-grams were trained: 6 unigrams ([CLS] a good bad one [SEP]) and 6 bigrams
    assert int((moved > 0).sum()) <= 12
    assert moved.max() > 0.05


def test_ngram_bags_export_save_and_reload_exactly(grec_config, train_steps, tmp_path):
    model = build_model(grec_config(with_text=True, ngram_buckets=256,
                                    router=RouterConfig(mode="task", num_experts=3, top_k=1)))
    assert set(model.encoder.ngram_bags) == {"title", "query"}  # item and context text alike
    batch = model.collate(random_columns(model.config.input, 6))
    train_steps(model, batch)
    assert model.encoder.ngram_bags["query"].bag.weight.abs().max() > 0.02  # moved from its init
    with torch.no_grad():
        full = model(batch).logits
        for task, logits in full.items():
            torch.testing.assert_close(model.export_task(task)(batch), logits, atol=2e-6, rtol=0)
    reloaded = load_model(save_model(model, tmp_path / "model"))
    assert reloaded.config.text.ngram_buckets == 256
    with torch.no_grad():
        again = reloaded(batch).logits
    for task, logits in full.items():
        assert torch.equal(again[task], logits), task


def test_without_ngram_buckets_the_saved_layout_is_unchanged(grec_config):
    model = build_model(grec_config(with_text=True))
    assert not [name for name in model.state_dict() if "ngram" in name]
    assert model.encoder.text_projections["query"].in_features == model.encoder.text_encoder.hidden_size
