"""Matching parameter budgets across architectures, and the packaged MiniLM text encoder."""

from __future__ import annotations

import pytest
import torch

from grec import BaselineConfig, build_model, count_parameters, match_parameter_budget
from grec.budget import with_width


@pytest.mark.parametrize("architecture", ["mmoe", "ple", "shared_bottom", "grec"])
def test_budget_matching_lands_within_one_width_step(grec_config, architecture):
    budget = count_parameters(build_model(grec_config(expert_hidden=40)))
    config = match_parameter_budget(grec_config(architecture=architecture, baseline=BaselineConfig(num_experts=5)),
                                    budget)
    matched = count_parameters(build_model(config))
    step = count_parameters(build_model(with_width(config, 2))) - count_parameters(build_model(with_width(config, 1)))
    assert abs(matched - budget) <= step / 2 + 1
    if architecture == "grec":
        assert config.expert_hidden == 40
    with pytest.raises(ValueError, match="below the smallest"):
        match_parameter_budget(config, 10)


def test_packaged_minilm_encodes_similar_texts_closer():
    from grec import TextEncoderConfig
    from grec.batch import TokenizedText
    from grec.text import TextEncoder, load_tokenizer

    config = TextEncoderConfig(backbone="minilm")
    tokenizer = load_tokenizer(config)
    encoder = TextEncoder(config, len(tokenizer)).eval()
    texts = ["a red summer dress", "a light red dress for summer", "quarterly tax filing deadline"]
    tokens = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        vectors = encoder(TokenizedText(texts, tokens["input_ids"], tokens["attention_mask"]))
    assert vectors.shape == (3, 384)
    similarity = torch.nn.functional.cosine_similarity(vectors[0], vectors[1:], dim=-1)
    assert similarity[0] > similarity[1] + 0.2
