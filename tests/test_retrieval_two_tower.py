"""The two-tower retrieval head (grec/retrieval.py): what it reads from the model and what it learns."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from grec import build_model
from grec.retrieval import (RetrievalInputs, TwoTower, TwoTowerConfig, example_inputs, item_embeddings,
                            load_two_tower, model_item_table, save_two_tower, train_two_tower)
from jobs.retrieval.index import ann_recall, build_ann_index


def _columns(users: list[int], items: list[int], history: list[list[int]]) -> dict:
    n = len(users)
    return {"user_id": np.array(users), "item_id": np.array(items), "genres": [[1, 2]] * n,
            "age": np.zeros(n, dtype=np.float32), "hist_item_id": np.array(history)}


def test_user_side_reads_nothing_of_the_candidate(grec_config):
    """The user vector of a request must not depend on the placeholder item it is computed with."""
    model = build_model(grec_config()).eval()
    batch = model.collate(_columns([3, 3], [4, 17], [[1, 2, 3, 0, 0]] * 2))
    inputs = example_inputs(model, batch)
    assert torch.allclose(inputs.user_tokens[0], inputs.user_tokens[1], atol=1e-6)
    assert not torch.allclose(inputs.item_tokens[0], inputs.item_tokens[1], atol=1e-3)
    assert inputs.items.tolist() == [4, 17] and inputs.history.tolist() == [[1, 2, 3, 0, 0]] * 2
    assert model_item_table(model).shape[0] == 25  # the item vocabulary


def _clustered(rows: int, seed: int) -> tuple[RetrievalInputs, torch.Tensor, torch.Tensor]:
    """Users of 4 taste clusters (their cluster is in their tokens) who like the items of their cluster."""
    rng = np.random.default_rng(seed)
    num_items, clusters = 41, 4
    item_cluster = np.r_[0, np.arange(1, num_items) % clusters]  # id 0 is padding
    user_cluster = rng.integers(0, clusters, rows)
    items = np.array([rng.choice(np.flatnonzero(item_cluster[1:] == c)) + 1 for c in user_cluster])
    user_tokens = torch.from_numpy(np.eye(clusters, dtype=np.float32)[user_cluster] + rng.normal(0, 0.1, (rows, 4))
                                   .astype(np.float32))
    catalog = torch.randn(num_items, 6, generator=torch.Generator().manual_seed(seed))
    inputs = RetrievalInputs(user_tokens.float(), catalog[items], torch.from_numpy(items), None)
    return inputs, catalog, torch.from_numpy(item_cluster)


def test_two_tower_learns_each_users_taste_from_positives_alone():
    positives, catalog, item_cluster = _clustered(1000, seed=0)
    config = TwoTowerConfig(dim=8, hidden=32, history=False, epochs=6, batch_size=64, lr=1e-2)
    table = torch.randn(len(catalog), 4) * 0.01
    tower, losses = train_two_tower(positives, catalog, table, config)
    assert losses[-1] < losses[0]
    items = torch.arange(1, len(catalog))
    vectors = item_embeddings(tower, catalog, items)
    test, _, _ = _clustered(200, seed=1)
    with torch.no_grad():
        users = tower.user_embedding(test.user_tokens, None).numpy()
    top = np.argsort(-(users @ vectors.T), axis=1)[:, :5] + 1
    item_cluster = item_cluster.numpy()
    same_cluster = (item_cluster[top] == item_cluster[test.items.numpy()][:, None]).mean()
    assert same_cluster > 0.9  # chance: 0.25


def test_a_repeat_of_the_positive_item_is_not_a_negative():
    tower = TwoTower(TwoTowerConfig(dim=4, hidden=8), 3, 3, torch.zeros(5, 2))
    users = torch.nn.functional.normalize(torch.ones(2, 4), dim=-1)
    items = users.clone()
    log_q = torch.zeros(5)
    assert float(tower.in_batch_loss(users, items, torch.tensor([2, 2]), log_q)) < 1e-6  # not log 2
    assert abs(float(tower.in_batch_loss(users, items, torch.tensor([2, 3]), log_q)) - np.log(2)) < 1e-5


def test_saved_two_tower_loads_to_the_same_vectors(tmp_path):
    positives, catalog, _ = _clustered(100, seed=2)
    history = torch.randint(0, 41, (100, 3))
    positives = positives._replace(history=history)
    tower, _ = train_two_tower(positives, catalog, torch.randn(41, 4),
                               TwoTowerConfig(dim=8, hidden=16, epochs=1, batch_size=32))
    loaded = load_two_tower(save_two_tower(tower, tmp_path / "tower"))
    with torch.no_grad():
        assert torch.equal(tower.user_embedding(positives.user_tokens, history),
                           loaded.user_embedding(positives.user_tokens, history))
    assert np.array_equal(item_embeddings(tower, catalog, positives.items),
                          item_embeddings(loaded, catalog, positives.items))


def test_hnsw_index_finds_the_exact_neighbours():
    rng = np.random.default_rng(0)
    items = rng.normal(size=(2000, 16)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    queries = items[rng.choice(2000, 50)] + rng.normal(0, 0.1, (50, 16)).astype(np.float32)
    index = build_ann_index(items, "hnsw")
    assert ann_recall(index, items, queries, k=50, ef_search=128) > 0.95
    assert ann_recall(build_ann_index(items, "flat"), items, queries, k=50, ef_search=1) == 1.0


def test_collated_arrow_rows_give_the_same_inputs_as_arrays(grec_config):
    model = build_model(grec_config()).eval()
    columns = _columns([1, 2], [3, 4], [[1, 0, 0, 0, 0], [2, 3, 0, 0, 0]])
    table = pa.table({k: (pa.array(v.tolist()) if isinstance(v, np.ndarray) else pa.array(v))
                      for k, v in columns.items()})
    a, b = example_inputs(model, model.collate(columns)), example_inputs(model, model.collate(table))
    assert torch.allclose(a.user_tokens, b.user_tokens) and torch.equal(a.items, b.items)
