"""The top-N evaluation's peers score any block of users as they score all users at once: the driver
scores the judged users a block at a time, so the lists must not depend on the blocks."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp

from jobs.evaluate.peers import PeerData, PeerUsers, fit_peer
from recommend.popularity import DAY_S, ItemPopularity

SETTINGS = [("popularity", {}), ("recent_popularity", {"window_days": 7.0}), ("ease", {"l2": 10.0})]
if importlib.util.find_spec("implicit") is not None:
    SETTINGS += [("item_knn", {"kind": "bm25", "neighbours": 10}),
                 ("als", {"factors": 8, "regularization": 0.1, "alpha": 1.0, "iterations": 3})]


def _data(seed: int = 0) -> tuple[PeerData, PeerUsers]:
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 30, 400), rng.integers(0, 25, 400)
    matrix = sp.csr_matrix((np.ones(400, np.float32), (users, items)), shape=(30, 25))
    matrix.data[:] = 1.0
    popularity = ItemPopularity.from_events(items + 1, rng.integers(0, 40, 400) * DAY_S, 25)
    # users 30-34 have no history: they get popularity
    scored = PeerUsers([f"u{u}" for u in range(35)], rng.integers(10, 50, 35).astype(np.float64) * DAY_S)
    return PeerData(matrix, {f"u{u}": u for u in range(30)}, popularity), scored


@pytest.mark.parametrize(("peer", "params"), SETTINGS)
def test_a_fitted_peer_scores_blocks_of_users_as_all_users_at_once(peer: str, params: dict) -> None:
    data, users = _data()
    scorer = fit_peer(peer, data, params, seed=0)
    whole = scorer(users)
    assert whole.shape == (35, 25)
    for block in (1, 4, 16):
        parts = [scorer(PeerUsers(users.ids[start:start + block], users.now[start:start + block]))
                 for start in range(0, 35, block)]
        assert np.array_equal(np.concatenate(parts), whole)
