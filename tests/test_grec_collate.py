"""model.collate: transformed columns (dict of arrays or a pyarrow Table) -> tensors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from grec import build_model
from grec.synthetic import random_columns


def _as_table(columns: dict) -> pa.Table:
    return pa.table({name: pa.array([list(v) for v in value]) if isinstance(value, list) and not
                     isinstance(value[0], str) else pa.array(value) for name, value in columns.items()})


def test_dict_and_table_give_the_same_batch(grec_config):
    model = build_model(grec_config(with_text=True))
    columns = random_columns(model.config.input, rows=6, seed=1)
    from_dict, from_table = model.collate(columns), model.collate(_as_table(columns))
    assert from_dict.size == from_table.size == 6
    assert from_dict.categorical.keys() == ["user_id", "item_id", "genres"]
    for a, b in [(from_dict.categorical.values(), from_table.categorical.values()),
                 (from_dict.categorical.lengths(), from_table.categorical.lengths()),
                 (from_dict.sequences.values(), from_table.sequences.values()),
                 (from_dict.numeric, from_table.numeric),
                 (from_dict.text["title"].input_ids, from_table.text["title"].input_ids)]:
        assert torch.equal(a, b)
    genres = from_dict.categorical["genres"]
    assert genres.lengths().tolist() == [len(g) for g in columns["genres"]]
    assert from_dict.sequences["hist_item_id"].values().view(6, 5).tolist() == np.stack(columns["hist_item_id"]).tolist()
    assert from_dict.labels["like"].dtype == torch.float32 and from_dict.labels["next_item"].dtype == torch.int64


def test_labels_only_when_present_and_clear_errors(grec_config):
    model = build_model(grec_config())
    columns = random_columns(model.config.input, rows=4, labels=False)
    assert model.collate(columns).labels == {}
    with pytest.raises(KeyError, match="column 'age' is missing"):
        model.collate({k: v for k, v in columns.items() if k != "age"})
    columns["user_id"] = np.array([1, 2, 3, 30])
    with pytest.raises(ValueError, match=r"column 'user_id': ids must be in \[0, 30\)"):
        model.collate(columns)


def test_empty_history_and_empty_multi_hot(grec_config):
    model = build_model(grec_config()).eval()
    columns = random_columns(model.config.input, rows=3)
    columns["hist_item_id"] = [np.zeros(5, dtype=np.int64)] * 3
    columns["genres"] = [np.array([], dtype=np.int64)] * 3
    out = model(model.collate(columns))
    assert all(torch.isfinite(v).all() for v in out.logits.values())


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_token_cache_pads_like_the_tokenizer_and_stays_bounded(padding_side):
    from grec.batch import TokenCache
    from grec.config import TextEncoderConfig
    from grec.text import load_tokenizer

    tokenizer = load_tokenizer(TextEncoderConfig(backbone="tiny_bert"))
    tokenizer.padding_side = padding_side
    cache = TokenCache(tokenizer, max_entries=3)
    texts = ["Toy Story (1995)", "", "a rather long review that the truncation must cut short", "Toy Story (1995)",
             "Heat (1995)", "Toy Story (1995)"]
    for max_length in (6, 32):  # one text, two truncation lengths: two cache entries
        expected = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        for _ in range(2):  # the second pass is served from the cache
            input_ids, attention_mask = cache(texts, max_length)
            assert torch.equal(input_ids, expected["input_ids"])
            assert torch.equal(attention_mask, expected["attention_mask"])
    assert len(cache._ids) == 3
    assert cache([], 8)[0].shape == (0, 0)
