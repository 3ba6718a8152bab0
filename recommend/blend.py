"""Blends: how a task ranks its candidates, as a weighted sum of terms standardized over each user's
candidates (a logit, a log count and a co-visitation score then mix by their weights alone).

The weights are fitted on the validation split, per task, by coordinate ascent on NDCG@k (the
metric the lists are judged by), not fixed by hand: each round tries every weight of a small grid
for each term in turn and keeps a change only when validation NDCG improves.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from recommend.metrics import ndcg

# Weights each term may take during the fit (0 leaves the term out).
WEIGHT_GRID = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
FIT_ROUNDS = 3


def standardized(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Each row's valid entries minus their mean over their standard deviation (0 where a row's
    valid entries are all alike); invalid entries 0."""
    count = np.maximum(valid.sum(axis=1, keepdims=True), 1)
    clean = np.where(valid, values, 0.0).astype(np.float64)
    mean = clean.sum(axis=1, keepdims=True) / count
    spread = np.sqrt((np.where(valid, clean - mean, 0.0) ** 2).sum(axis=1, keepdims=True) / count)
    out = np.where(spread > 0, (clean - mean) / np.where(spread > 0, spread, 1.0), 0.0)
    return np.where(valid, out, 0.0)


def blend_key(terms: Mapping[str, np.ndarray], weights: Mapping[str, float], valid: np.ndarray) -> np.ndarray:
    """[users, candidates]: Σ weight × standardized term; -inf where a candidate slot is empty."""
    total = np.zeros(valid.shape, dtype=np.float64)
    for name, weight in weights.items():
        if weight:
            total += weight * standardized(terms[name], valid)
    return np.where(valid, total, -np.inf)


def top_k(key: np.ndarray, k: int) -> np.ndarray:
    """[users, k] positions of each row's k largest entries, largest first (ties: lower position)."""
    k = min(k, key.shape[1])
    order = np.argsort(-key, axis=1, kind="stable")
    return order[:, :k]


def blend_ndcg(terms: Mapping[str, np.ndarray], weights: Mapping[str, float], valid: np.ndarray,
               relevant: np.ndarray, truth_counts: np.ndarray, k: int) -> float:
    key = blend_key(terms, weights, valid)
    picked = top_k(key, k)
    hits = np.take_along_axis(relevant & valid, picked, axis=1)
    return float(ndcg(hits, truth_counts, k).mean())


def fit_blend(terms: Mapping[str, np.ndarray], valid: np.ndarray, relevant: np.ndarray, truth_counts: np.ndarray,
              k: int = 10, start: Mapping[str, float] | None = None) -> tuple[dict[str, float], float]:
    """Weights over `terms` ([users, candidates] each) that maximize NDCG@k of `relevant` on these
    users; (weights, NDCG@k). `start`: the first weights tried (default 1 for every term)."""
    weights = {name: 1.0 for name in terms} if start is None else {name: float(start.get(name, 0.0)) for name in terms}
    best = blend_ndcg(terms, weights, valid, relevant, truth_counts, k)
    for _ in range(FIT_ROUNDS):
        improved = False
        for name in terms:
            for value in WEIGHT_GRID:
                if value == weights[name]:
                    continue
                trial = {**weights, name: value}
                if not any(trial.values()):
                    continue
                score = blend_ndcg(terms, trial, valid, relevant, truth_counts, k)
                if score > best + 1e-6:
                    best, weights, improved = score, trial, True
        if not improved:
            break
    return weights, best
