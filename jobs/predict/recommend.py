"""`grec recommend`: the endpoint's top-k lists for many users at once, as a Ray Data job, into one
Parquet file (user_id, rank, item_id, score, task): the lists teams push to e-mails and home pages.

Each actor loads the version (ranker and recommendation stage) and opens the online store once, then
for its batch of users reads each user as the endpoint does (serving.retrieval.user_state: feature
row, seen set, latest events), builds the candidates' rows from the store (the feature lookup's
`build_request_rows`) and ranks them with `recommend.recommender.rank_lists`, the function the
endpoint and the offline evaluation run. `score` is what the list is ordered by (the task's blend).

The file is written beside its destination under a temporary name and renamed when complete.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from feature_store.atomic import write_parquet_atomically
from jobs.evaluate.inference import InferenceOptions, load_in_actor, map_with_model
from jobs.predict.predict import parquet_out
from jobs.ray_runtime import ray_session

OUTPUT_COLUMNS = ("user_id", "rank", "item_id", "score", "task")


@dataclass(frozen=True)
class RecommendSummary:
    path: Path
    users: int
    rows: int
    task: str
    model_name: str
    model_version: str
    seconds: float


class ListRanker:
    """A Ray Data callable class: a batch of user ids -> their top-k lists (OUTPUT_COLUMNS)."""

    def __init__(self, model_uri: str, tracking_uri: str, torch_threads: int, online_store: str, task: str, k: int,
                 exclude_seen: bool) -> None:
        from feature_store.online import open_online_store
        from recommend.ranker import Ranker
        from registry.retrieval_index import load_recommendation_stage

        loaded = load_in_actor(model_uri, tracking_uri, torch_threads)
        self.definition = loaded.definition
        self.ranker = Ranker(loaded.model, loaded.transforms, loaded.spec)
        self.stage = load_recommendation_stage(loaded.name, str(loaded.version))
        if self.stage is None:
            raise ValueError(f"{model_uri} has no recommendation stage; build it with `grec build-index`")
        self.store = open_online_store(online_store)
        self.task, self.k, self.exclude_seen = task, k, exclude_seen

    def __call__(self, batch: pa.Table) -> pa.Table:
        from feature_store.online import build_request_rows
        from recommend.recommender import rank_lists
        from recommend.rows import as_logit
        from serving.retrieval import user_state

        users = batch.column("user_id").to_pylist()
        states = [user_state(self.store, self.definition, user, None) for user in users]

        def score_tasks(positions: Sequence[int], candidates: Sequence[Sequence[Any]],
                        tasks: Sequence[str]) -> dict[str, list[np.ndarray]]:
            tables = [build_request_rows(self.store, self.definition, users[p], list(items), None)[0]
                      for p, items in zip(positions, candidates, strict=True) if len(items)]
            bounds = np.cumsum([0, *(len(items) for items in candidates)])
            out = {}
            for task in tasks:
                values = self.ranker.score(task, pa.concat_tables(tables)).scores if tables else np.zeros(0)
                values = as_logit(values) if task in self.ranker.binary_tasks else values
                out[task] = [values[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            return out

        lists = rank_lists(self.stage, [s.history(self.exclude_seen) for s in states], self.task, self.k,
                           score_tasks=score_tasks)
        rows: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
        for user, ranked in zip(users, lists, strict=True):
            for rank, (item, key) in enumerate(zip(ranked.items, ranked.keys, strict=True), start=1):
                rows["user_id"].append(user)
                rows["rank"].append(rank)
                rows["item_id"].append(item)
                rows["score"].append(key)
                rows["task"].append(self.task)
        return pa.table({"user_id": pa.array(rows["user_id"], batch.schema.field("user_id").type),
                         "rank": pa.array(rows["rank"], pa.int32()),
                         "item_id": pa.array(rows["item_id"], self.definition.item.dtype),
                         "score": pa.array(rows["score"], pa.float64()),
                         "task": pa.array(rows["task"], pa.string())})


def dataset_users(data_dir: str | Path) -> list[Any]:
    """Every user with an event in the prepared dataset."""
    from feature_store.options import SPLITS
    from feature_store.storage import open_dataset

    prepared = open_dataset(data_dir)
    key = prepared.definition().user.join_key
    users: dict[Any, None] = {}
    for split in SPLITS:
        for table in prepared.iter_split(split, columns=[key]):
            users.update(dict.fromkeys(table.column(0).to_pylist()))
    return list(users)


def recommend_to_parquet(model_uri: str, users: Sequence[Any], online_store: str, out_path: str | Path, *,
                         task: str, k: int = 10, exclude_seen: bool = True, tracking_uri: str | None = None,
                         address: str | None = None, options: InferenceOptions | None = None) -> RecommendSummary:
    """Writes the top-`k` list of every user in `users` for `task` to `out_path` (see the module's
    docstring). The version, its stage and the task are checked before Ray starts."""
    import mlflow

    from registry.models import load_registered, resolve_version
    from registry.retrieval_index import load_recommendation_stage
    from registry.tracking import named_tracking_uri

    out = parquet_out(out_path, "recommendations.parquet")
    if k < 1:
        raise ValueError(f"-k must be >= 1, got {k}")
    if not users:
        raise ValueError("no users to recommend for")
    with named_tracking_uri(tracking_uri):
        name, version = resolve_version(model_uri)
        stage = load_recommendation_stage(name, version)
        if stage is None:
            raise ValueError(f"{model_uri} (version {version}) has no recommendation stage; build it with "
                             f"`grec build-index --model {model_uri} --data DIR`")
        tasks = list(dict.fromkeys([*load_registered(f"models:/{name}/{version}").model.task_names, *stage.blends]))
        if task not in tasks:
            raise ValueError(f"--task {task!r}: expected one of {tasks}")
        started = time.perf_counter()
        options = options or InferenceOptions(batch_size=64)
        with ray_session(address):
            import ray.data

            user_type = pa.array(list(users)).type
            ids = ray.data.from_arrow(pa.table({"user_id": pa.array(list(users), user_type)}))
            ranked = map_with_model(ids, ListRanker, f"models:/{name}/{version}", tracking_uri or
                                    mlflow.get_registry_uri(), options, online_store=str(online_store), task=task,
                                    k=k, exclude_seen=exclude_seen)
            rows = write_parquet_atomically(out, ranked.iter_batches(batch_format="pyarrow", batch_size=None),
                                            empty="no list was produced")
        return RecommendSummary(out, len(users), rows, task, name, version, round(time.perf_counter() - started, 1))
