"""Ranked lists: a stage's candidates, the ranker's task terms where the task's blend uses them, the
blend, the top k. The endpoint, the batch job and the offline evaluation call `rank_lists`; they
differ only in where a user's history and the ranker's rows come from (the online store, or the
prepared dataset as of a split's start).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from recommend.blend import blend_key, top_k
from recommend.stage import SOURCES, CandidateSet, RecommendationStage, UserHistory

# Scores of the ranker's tasks for candidates: (user positions in the block, each one's candidate raw
# ids, task names) -> {task: one array of scores per user}. Binary tasks as logits.
TaskScorer = Callable[[Sequence[int], Sequence[Sequence[Any]], Sequence[str]], dict[str, list[np.ndarray]]]


@dataclass(frozen=True)
class RankedList:
    """One user's list: raw item ids, the blended key of each and every term that went into it."""

    items: list[Any]
    keys: list[float]
    terms: dict[str, list[float]]


def task_weights(stage: RecommendationStage, task: str, override: Mapping[str, float] | None) -> dict[str, float]:
    """The weights a task ranks by: the request's, else the blend fitted for the task, else the
    task's own score alone (a task the stage has no blend for, such as a regression)."""
    if override:
        return dict(override)
    if task in stage.blends:
        return dict(stage.blends[task])
    return {task: 1.0}


def ranker_terms(weights: Mapping[str, float]) -> list[str]:
    """The blend's terms that are tasks (everything but the stage's sources)."""
    return [name for name, weight in weights.items() if weight and name not in SOURCES]


def add_task_terms(candidates: CandidateSet, stage: RecommendationStage, tasks: Sequence[str],
                   score_tasks: TaskScorer | None) -> None:
    """Fills candidates.terms[task] for `tasks` with the ranker's scores (in place)."""
    if not tasks:
        return
    if score_tasks is None:
        raise ValueError(f"the blend uses the ranker's tasks {list(tasks)}, and no ranker was given")
    users = list(range(len(candidates.rows)))
    items = [stage.items(candidates.rows[u]) for u in users]
    scored = score_tasks(users, items, list(tasks))
    for task in tasks:
        term = np.zeros(candidates.rows.shape, dtype=np.float64)
        for user in users:
            values = scored[task][user]
            term[user, :len(values)] = values
        candidates.terms[task] = term


def rank_lists(stage: RecommendationStage, users: Sequence[UserHistory], task: str, k: int, *,
               weights: Mapping[str, float] | None = None, score_tasks: TaskScorer | None = None,
               per_source: int | None = None) -> list[RankedList]:
    """Each user's top k unexcluded items for `task` (see the module's docstring)."""
    if not users:
        return []
    chosen = task_weights(stage, task, weights)
    candidates = stage.candidates(users, per_source)
    missing_sources = [name for name in chosen if name in SOURCES and name not in candidates.terms and chosen[name]]
    if missing_sources:
        raise ValueError(f"the blend weighs {missing_sources}, which this stage does not have ({stage.sources})")
    add_task_terms(candidates, stage, ranker_terms(chosen), score_tasks)
    key = blend_key(candidates.terms, {n: w for n, w in chosen.items() if n in candidates.terms}, candidates.valid)
    picked = top_k(key, k)
    out = []
    for user in range(len(users)):
        positions = [p for p in picked[user] if candidates.valid[user, p]]
        out.append(RankedList(stage.items(candidates.rows[user, positions]),
                              [float(key[user, p]) for p in positions],
                              {name: [float(values[user, p]) for p in positions]
                               for name, values in candidates.terms.items()}))
    return out
