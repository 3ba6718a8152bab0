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
    """Scores every request with `servable`. The rows of the batch go through the transforms, the
    collation and the shared encoders once (twice when some requests bring their user's stored
    representation and some do not), each distinct table once: the tasks of one request share its
    rows. Then each task's own part runs once over the rows of the requests that asked for it."""
    model_ref = {"name": servable.name, "version": servable.version, "alias": servable.alias}
    results: list[RankResult | None] = [None] * len(requests)
    groups: dict[bool, list[int]] = {}
    for index, request in enumerate(requests):
        if request.task in servable.task_names:
            groups.setdefault(request.user_tokens is not None, []).append(index)
        else:
            results[index] = RankResult(model_ref, [], [], error=UnknownTaskError(request.task, servable.task_names))
    for stored, indices in groups.items():
        # Where each distinct table starts among the group's rows (a table shared by requests counts once).
        starts: dict[int, int] = {}
        tables: list[pa.Table] = []
        total = 0
        for index in indices:
            table = requests[index].rows
            if id(table) not in starts:
                starts[id(table)] = total
                tables.append(table)
                total += table.num_rows
        user_tokens = None
        if stored:  # each table's user tokens, repeated over its rows
            owners = {id(requests[i].rows): requests[i].user_tokens for i in indices}
            user_tokens = np.concatenate([np.broadcast_to(owners[id(t)], (t.num_rows, *owners[id(t)].shape))
                                          for t in tables])
        # Per task, the positions of its requests' rows, in the order of its requests.
        spans: dict[str, list[tuple[int, int]]] = {}
        for index in indices:
            start = starts[id(requests[index].rows)]
            spans.setdefault(requests[index].task, []).append((start, start + requests[index].rows.num_rows))
        rows_of = {task: np.concatenate([np.arange(a, b) for a, b in task_spans])
                   for task, task_spans in spans.items() if task_spans != [(0, total)]}
        scored = servable.score_tasks(list(spans), pa.concat_tables(tables) if len(tables) > 1 else tables[0],
                                      user_tokens, rows_of)
        offsets = {task: 0 for task in spans}
        for index in indices:
            task, size = requests[index].task, requests[index].rows.num_rows
            results[index] = _slice(model_ref, scored[task], offsets[task], offsets[task] + size, len(requests))
            offsets[task] += size
    return results  # type: ignore[return-value]  # every slot is filled above


def _slice(model_ref: dict[str, str | None], scored: TaskScores, start: int, end: int,
           batch_size: int) -> RankResult:
    probabilities = None
    if scored.class_probabilities is not None:
        probabilities = scored.class_probabilities[start:end].tolist()
    return RankResult(model_ref, scored.scores[start:end].tolist(), scored.known_items[start:end].tolist(),
                      probabilities, batch_size)
