"""Ranking a batch of requests: rows grouped by task, one forward per task, results split back.

Kept apart from the Serve deployment so the benchmark's in-process baseline and the tests run the
very same function the scorer replicas run.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from serving.errors import ServingError, UnknownTaskError
from serving.servable import ServableModel, TaskScores


@dataclass(frozen=True)
class RankRequest:
    task: str
    rows: pa.Table  # raw rows, the training set's schema (serving.features.request_rows)
    deadline: float = float("inf")  # time.time() after which nobody waits for the answer
    # The rows' user's stored representation [num_user_tokens, d_model] (RequestRows.user_tokens):
    # the model then runs the item side only. None: the user side is computed from the rows.
    user_tokens: np.ndarray | None = None


@dataclass(frozen=True)
class RankResult:
    """Scores for one request and which model version produced them. `error` is set instead when
    the request could not be ranked for a reason of its own (an unknown task)."""

    model: dict[str, str | None]  # name, version, alias
    scores: list[float]
    known_items: list[bool]
    class_probabilities: list[list[float]] | None = None
    batch_size: int = 1
    error: ServingError | None = None

    @classmethod
    def failed(cls, error: ServingError) -> RankResult:
        return cls({}, [], [], error=error)


def rank_batch(servable: ServableModel, requests: list[RankRequest]) -> list[RankResult]:
    """Scores every request with `servable`, concatenating the rows of requests for the same task
    so that each task runs through its sub-model once per batch (twice when some requests bring
    their user's stored representation and some do not)."""
    model_ref = {"name": servable.name, "version": servable.version, "alias": servable.alias}
    results: list[RankResult | None] = [None] * len(requests)
    groups: dict[tuple[str, bool], list[int]] = {}
    for index, request in enumerate(requests):
        if request.task in servable.task_names:
            groups.setdefault((request.task, request.user_tokens is not None), []).append(index)
        else:
            results[index] = RankResult(model_ref, [], [], error=UnknownTaskError(request.task, servable.task_names))
    for (task, stored), indices in groups.items():
        tables = [requests[i].rows for i in indices]
        user_tokens = None
        if stored:  # each request's user tokens, repeated over its rows
            user_tokens = np.concatenate([np.broadcast_to(requests[i].user_tokens, (table.num_rows,
                                                                                     *requests[i].user_tokens.shape))
                                          for i, table in zip(indices, tables, strict=True)])
        scored = servable.score(task, pa.concat_tables(tables) if len(tables) > 1 else tables[0], user_tokens)
        start = 0
        for index, table in zip(indices, tables, strict=True):
            end = start + table.num_rows
            results[index] = _slice(model_ref, scored, start, end, len(requests))
            start = end
    return results  # type: ignore[return-value]  # every slot is filled above


def _slice(model_ref: dict[str, str | None], scored: TaskScores, start: int, end: int,
           batch_size: int) -> RankResult:
    probabilities = None
    if scored.class_probabilities is not None:
        probabilities = scored.class_probabilities[start:end].tolist()
    return RankResult(model_ref, scored.scores[start:end].tolist(), scored.known_items[start:end].tolist(),
                      probabilities, batch_size)
