"""The recommendation stage's parts on data whose answer is known: co-visitation, the next-item
transformer, recent popularity, the fitted blend, the metrics, and the stage's files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grec.covisitation import CovisitationConfig, build_covisitation
from grec.next_item import NextItemConfig, stack_histories, train_next_item
from recommend.blend import blend_key, fit_blend, standardized
from recommend.metrics import ShownItems, hit_rate, mrr, ndcg, recall
from recommend.popularity import DAY_S, ItemPopularity
from recommend.recommender import rank_lists
from recommend.stage import COVISITATION, NEXT_ITEM, POPULARITY, RecommendationStage, UserHistory


def _cycles(users: int, items: int, length: int, seed: int = 0) -> list[np.ndarray]:
    """Each user walks the catalogue in order (1 -> 2 -> ... -> items -> 1) from a random start."""
    rng = np.random.default_rng(seed)
    return [((rng.integers(items) + np.arange(length)) % items + 1).astype(np.int64) for _ in range(users)]


def test_covisitation_scores_what_follows_the_latest_items():
    sequences = _cycles(50, 20, 12)
    covisitation = build_covisitation(sequences, 20, CovisitationConfig(window=2, last_items=1, neighbours=5))
    scores = covisitation.scores([np.array([7])])
    assert scores.shape == (1, 20)
    assert int(np.argmax(scores[0])) + 1 == 8  # after item 7 comes item 8 (forward pairs weigh most)
    # pruning keeps at most `neighbours` per item
    assert max(np.diff(covisitation.matrix.indptr)) <= 5


def test_the_next_item_model_learns_a_sequence_and_reads_time():
    sequences = _cycles(40, 15, 7, seed=1)
    times = [np.arange(len(s), dtype=np.float64) * 60.0 for s in sequences]
    config = NextItemConfig(d_model=16, num_layers=1, num_heads=2, ffn_hidden=32, max_length=6, dropout=0.0,
                            max_epochs=40, batch_size=16, lr=1e-2)
    model, losses = train_next_item(sequences, times, 15, config)
    assert losses[-1] < losses[0] / 3
    histories = stack_histories([(np.array([3, 4, 5]), np.array([0.0, 60.0, 120.0]))], config.max_length)
    with torch.inference_mode():
        scores = model.scores(model.user_vectors(histories, torch.tensor([180.0])))
    assert int(scores.argmax()) + 1 == 6


def test_the_next_item_model_trains_a_sampled_softmax_beyond_the_full_softmax_size():
    sequences = _cycles(40, 30, 8, seed=2)
    times = [np.zeros(len(s)) for s in sequences]
    config = NextItemConfig(d_model=16, num_layers=1, num_heads=2, ffn_hidden=32, max_length=6, max_epochs=3,
                            full_softmax_items=10, negatives=8)
    model, losses = train_next_item(sequences, times, 30, config)
    assert len(losses) == 3 and all(np.isfinite(losses))


def test_popularity_counts_the_window_before_each_moment():
    items = np.array([1, 1, 2, 2, 2, 3])
    times = np.array([0, 1, 10, 11, 12, 20], dtype=np.float64) * DAY_S
    popularity = ItemPopularity.from_events(items, times, 3)
    counts = popularity.counts(np.array([13 * DAY_S, 25 * DAY_S]), window_days=5)
    assert counts.tolist() == [[0, 3, 0], [0, 0, 1]]
    assert popularity.counts(np.array([13 * DAY_S]), None).tolist() == [[2, 3, 0]]


def test_standardized_terms_ignore_empty_slots():
    valid = np.array([[True, True, False]])
    assert standardized(np.array([[1.0, 3.0, 100.0]]), valid).tolist() == [[-1.0, 1.0, 0.0]]
    assert blend_key({"a": np.array([[1.0, 3.0, 5.0]])}, {"a": 1.0}, valid)[0, 2] == -np.inf


def test_the_fitted_blend_keeps_the_term_that_finds_the_relevant_items():
    rng = np.random.default_rng(0)
    users, candidates = 200, 30
    relevant = np.zeros((users, candidates), dtype=bool)
    relevant[np.arange(users), rng.integers(candidates, size=users)] = True
    terms = {"useful": relevant + rng.normal(0, 0.3, (users, candidates)), "noise": rng.normal(size=(users, candidates))}
    valid = np.ones_like(relevant)
    weights, score = fit_blend(terms, valid, relevant, relevant.sum(axis=1), k=10)
    assert weights["useful"] > 0 and weights["noise"] == 0 and score > 0.9


def test_metrics_of_one_list():
    relevant = np.array([[False, True, False, True]])
    counts = np.array([2])
    assert hit_rate(relevant, 1)[0] == 0 and hit_rate(relevant, 2)[0] == 1
    assert mrr(relevant, 4)[0] == 0.5
    assert recall(relevant, counts, 2)[0] == 0.5
    expected = (1 / np.log2(3) + 1 / np.log2(5)) / (1 + 1 / np.log2(3))
    assert ndcg(relevant, counts, 4)[0] == pytest.approx(expected)
    lists = np.array([[1, 2], [2, 0]])
    shown = ShownItems(np.array([0, 1.0, 2.0, 3.0, 4.0]), 2)
    for user in lists:  # one user a block: the same as all at once
        shown.add(user[None])
    assert shown.coverage() == 0.5 and shown.novelty() == pytest.approx(5 / 3)


@pytest.fixture(scope="module")
def stage() -> RecommendationStage:
    item_ids = [f"item-{i}" for i in range(1, 21)]
    sequences = _cycles(30, 20, 7, seed=3)
    times = [np.arange(len(s), dtype=np.float64) * DAY_S for s in sequences]
    config = NextItemConfig(d_model=16, num_layers=1, num_heads=2, ffn_hidden=32, max_length=6, max_epochs=15,
                            batch_size=16, lr=1e-2)
    model, _ = train_next_item(sequences, times, 20, config)
    flat, flat_times = np.concatenate(sequences), np.concatenate(times)
    return RecommendationStage(item_ids, ItemPopularity.from_events(flat, flat_times, 20),
                               covisitation=build_covisitation(sequences, 20, CovisitationConfig(window=2)),
                               next_item=model, popularity_window_days=7.0, candidates_per_source=5,
                               blends={"watch": {COVISITATION: 1.0, NEXT_ITEM: 1.0}})


def test_candidates_never_include_excluded_items_and_carry_every_source(stage):
    user = UserHistory(["item-3", "item-4"], [0.0, DAY_S], {"item-3", "item-4", "item-5"}, 2 * DAY_S)
    found = stage.candidates([user])
    items = stage.items(found.rows[0][found.valid[0]])
    assert items and not {"item-3", "item-4", "item-5"} & set(items)
    assert set(found.terms) == {COVISITATION, NEXT_ITEM, POPULARITY}
    # without an exclusion the seen items may come back
    repeats = stage.candidates([UserHistory(user.items, user.times, set(), user.now)], per_source=20)
    assert "item-5" in stage.items(repeats.rows[0][repeats.valid[0]])


def test_a_stage_ranks_by_its_blend_and_round_trips_its_files(stage, tmp_path):
    user = UserHistory(["item-6", "item-7"], [0.0, 60.0], {"item-6", "item-7"}, 120.0)
    ranked = rank_lists(stage, [user], "watch", 3)[0]
    assert ranked.items[0] == "item-8" and len(ranked.items) == 3
    assert ranked.keys == sorted(ranked.keys, reverse=True)
    stage.save(tmp_path)
    loaded = RecommendationStage.load(tmp_path)
    again = rank_lists(loaded, [user], "watch", 3)[0]
    assert again.items == ranked.items and np.allclose(again.keys, ranked.keys)
    # a blend that weighs the ranker's tasks needs a ranker
    with pytest.raises(ValueError, match="no ranker"):
        rank_lists(stage, [user], "watch", 3, weights={"like": 1.0})


def test_a_user_without_history_gets_popular_items(stage):
    ranked = rank_lists(stage, [UserHistory([], [], set(), 9 * DAY_S)], "watch", 2,
                        weights={POPULARITY: 1.0})[0]
    counts = stage.popularity.counts(np.array([9 * DAY_S]), 7.0)[0]
    assert [stage.row_of[i] - 1 for i in ranked.items] == list(np.argsort(-counts, kind="stable")[:2])
