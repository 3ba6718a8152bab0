"""The recommenders a team would run instead of grec, for the top-N evaluation: each fitted on the
interactions before a split, tuned on the validation split with the same number of trials, and
scoring the whole catalogue for each user.

- `popularity`: interactions per item over all history;
- `recent_popularity`: interactions in the last W days before each user's moment (W tuned);
- `item_knn`: implicit's item-item cosine or BM25 neighbours (K tuned);
- `als`: implicit's alternating least squares (factors, regularization, confidence scaling);
- `bpr`: implicit's Bayesian personalized ranking (factors, learning rate, regularization);
- `ease`: EASE (Steck 2019), the closed-form item-item model (L2 strength tuned); catalogues above
  EASE_MAX_ITEMS are reported as skipped (a dense items x items inverse).
Users a matrix model has no row for get popularity (they have no history to fold in).
"""

from __future__ import annotations

import itertools
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from recommend.popularity import ItemPopularity

PEERS = ("popularity", "recent_popularity", "item_knn", "als", "bpr", "ease")
EASE_MAX_ITEMS = 20_000
# Each peer's search space; the first `trials` settings (a seeded shuffle of the grid) are tried.
SPACES: dict[str, dict[str, Sequence[Any]]] = {
    "popularity": {},
    "recent_popularity": {"window_days": (1.0, 3.0, 7.0, 14.0, 28.0, 56.0, 91.0, 182.0, 365.0, None)},
    "item_knn": {"kind": ("cosine", "bm25"), "neighbours": (10, 25, 50, 100, 200, 400)},
    "als": {"factors": (32, 64, 128), "regularization": (0.01, 0.1, 1.0), "alpha": (1.0, 10.0), "iterations": (15,)},
    "bpr": {"factors": (32, 64, 128), "learning_rate": (0.01, 0.05), "regularization": (0.001, 0.01),
            "iterations": (100,)},
    "ease": {"l2": (10.0, 25.0, 50.0, 100.0, 200.0, 300.0, 500.0, 750.0, 1000.0, 2000.0, 5000.0, 10000.0)},
}


@dataclass(frozen=True)
class PeerData:
    """Interactions before a split, in catalogue rows (0..N-1 here): what a peer fits on."""

    matrix: sp.csr_matrix  # [users seen before the split, N] binary
    user_row: dict[Any, int]  # raw user id -> row of `matrix`
    popularity: ItemPopularity  # rows 1..N, as recommend.popularity counts them

    @property
    def num_items(self) -> int:
        return self.matrix.shape[1]


@dataclass(frozen=True)
class PeerUsers:
    """Users a fitted peer scores: raw ids and each one's moment (seconds)."""

    ids: list[Any]
    now: np.ndarray


# A fitted peer: [users, N] scores of every catalogue item for the users given. Fitting is once per
# setting; scoring goes a block of users at a time, so no [every user, N] array exists at once.
PeerScorer = Callable[[PeerUsers], np.ndarray]


def settings(peer: str, trials: int, seed: int) -> list[dict[str, Any]]:
    space = SPACES[peer]
    grid = [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]
    np.random.default_rng(seed).shuffle(grid)
    return grid[:trials] if grid else [{}]


def _popularity(data: PeerData) -> PeerScorer:
    log_counts = np.log1p(np.asarray(data.matrix.sum(axis=0)).ravel().astype(np.float32))
    return lambda users: np.tile(log_counts, (len(users.ids), 1))


def _user_rows(data: PeerData, users: PeerUsers) -> tuple[np.ndarray, np.ndarray]:
    """(positions of users with a matrix row, their rows)."""
    known = [(i, data.user_row[u]) for i, u in enumerate(users.ids) if u in data.user_row]
    return np.array([i for i, _ in known], dtype=np.int64), np.array([r for _, r in known], dtype=np.int64)


def _with_fallback(data: PeerData, fill: Callable[[np.ndarray], np.ndarray]) -> PeerScorer:
    """Popularity for every user, replaced by `fill(rows)` where the user has a matrix row."""
    popularity = _popularity(data)

    def score(users: PeerUsers) -> np.ndarray:
        scores = popularity(users)
        positions, rows = _user_rows(data, users)
        if len(rows):
            # Far above any log count: a known user's own scores always rank first.
            scores[positions] = fill(rows) + 1e6
        return scores

    return score


def _implicit_scorer(make_model: Callable[[], Any], data: PeerData) -> PeerScorer:
    from implicit.utils import ParameterWarning
    from threadpoolctl import threadpool_limits

    # implicit's advice: its own threads, single-threaded BLAS (its constructors warn otherwise).
    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        # The item-item models normalize our CSR matrix into a COO one and then warn about converting
        # their own matrix back: nothing a caller can change.
        warnings.simplefilter("ignore", ParameterWarning)
        model = make_model()
        model.fit(data.matrix, show_progress=False)

    def fill(rows: np.ndarray) -> np.ndarray:
        if hasattr(model, "user_factors"):
            users, items = model.user_factors, model.item_factors
            users = users.to_numpy() if hasattr(users, "to_numpy") else users
            items = items.to_numpy() if hasattr(items, "to_numpy") else items
            return (users[rows] @ items.T).astype(np.float32)
        # item-item models: the user's items times the similarity matrix
        return np.asarray((data.matrix[rows] @ model.similarity).todense(), dtype=np.float32)

    return _with_fallback(data, fill)


def fit_peer(peer: str, data: PeerData, params: dict[str, Any], seed: int = 0) -> PeerScorer:
    """`peer` with `params` fitted on `data`: a scorer of every catalogue item for any users."""
    if peer == "popularity":
        return _popularity(data)
    if peer == "recent_popularity":
        return lambda users: data.popularity.scores(users.now, params["window_days"])
    if peer == "item_knn":
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        kind = BM25Recommender if params["kind"] == "bm25" else CosineRecommender
        return _implicit_scorer(lambda: kind(K=params["neighbours"], num_threads=1), data)
    if peer == "als":
        from implicit.als import AlternatingLeastSquares

        return _implicit_scorer(lambda: AlternatingLeastSquares(
            factors=params["factors"], regularization=params["regularization"], alpha=params["alpha"],
            iterations=params["iterations"], random_state=seed, num_threads=1), data)
    if peer == "bpr":
        from implicit.bpr import BayesianPersonalizedRanking

        return _implicit_scorer(lambda: BayesianPersonalizedRanking(
            factors=params["factors"], learning_rate=params["learning_rate"], regularization=params["regularization"],
            iterations=params["iterations"], random_state=seed, num_threads=1), data)
    if peer == "ease":
        gram = (data.matrix.T @ data.matrix).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += params["l2"]
        inverse = np.linalg.inv(gram)
        weights = inverse / -np.diag(inverse)
        weights[np.diag_indices_from(weights)] = 0.0
        return _with_fallback(data, lambda rows: np.asarray(data.matrix[rows] @ weights, dtype=np.float32))
    raise ValueError(f"unknown peer {peer!r}; peers: {list(PEERS)}")


def skip_reason(peer: str, num_items: int) -> str | None:
    """Why a peer cannot run on this catalogue (None: it can)."""
    if peer == "ease" and num_items > EASE_MAX_ITEMS:
        return f"EASE inverts a dense items x items matrix; the catalogue has {num_items} items (> {EASE_MAX_ITEMS})"
    if peer in ("item_knn", "als", "bpr"):
        import importlib.util

        if importlib.util.find_spec("implicit") is None:
            return "the `implicit` package is not installed"
    return None


@dataclass(frozen=True)
class TunedPeer:
    name: str
    params: dict[str, Any]
    validation: float  # the tuning metric of the chosen settings
    trials: list[tuple[dict[str, Any], float]]
    tuning_cpu_s: float
    fit_cpu_s: float  # the final fit (before the evaluated split)
    scorer: PeerScorer  # the chosen settings fitted on the final data


def tune_peer(peer: str, tuning: PeerData, judge: Callable[[PeerScorer], float], final: PeerData, trials: int,
              seed: int = 0) -> TunedPeer:
    """Tries `trials` settings fitted on `tuning` (`judge` scores the tuning users with each) and
    refits the best on `final`."""
    started = time.process_time()
    tried = []
    for params in settings(peer, trials, seed):
        tried.append((params, judge(fit_peer(peer, tuning, params, seed))))
    best = max(tried, key=lambda entry: entry[1])
    tuning_cpu = time.process_time() - started
    started = time.process_time()
    scorer = fit_peer(peer, final, best[0], seed)
    return TunedPeer(peer, best[0], best[1], tried, tuning_cpu, time.process_time() - started, scorer)
