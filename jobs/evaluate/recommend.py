"""The whole /v1/recommend path measured offline: what a user would have been shown when the split
began, against what they went on to like in it.

Replay: the online store is materialized as of the split's first moment (feature rows until then,
events before it; feature_store/online/materialize.py) into a temporary SQLite file. For each user
with a positive of the ranked task in the split, the endpoint's own code then runs as of that
moment: the user's row and seen set (serving.retrieval.user_state), candidates from the version's
retrieval index or popularity (serving.retrieval.CandidateRetriever), request rows for them and the
ranker's scores (serving.servable.ServableModel), top k. The truth is the items the user liked in
the split (a positive of the task).

Systems compared on the same users and seen sets:
- `popularity`: the k most popular unseen items (no model);
- `popularity+ranker`: popularity candidates ranked by the task (the endpoint without an index);
- `retrieval`: the two-tower's k nearest unseen items (no ranker);
- `retrieval+ranker`: /v1/recommend as served with the version's index (ranked by the task's
  score and the retrieval logit, as the ingress ranks retrieved candidates);
- `als`: the peer, implicit's alternating least squares on every interaction before the split.
Users without stored features (new in the split) get popularity from every system (ALS has no
factors for them either); the figures are reported for all users and for the warm ones.

Metrics per system: HR@k (share of users with a liked item in the top k), NDCG@k (binary gains,
log2 discount), recall@R of the candidate stage (share of a user's liked items among its R first
candidates, averaged over users), coverage (distinct items recommended to anyone / catalogue) and
the share of recommended items the user had already seen (0 by construction: it checks that).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from feature_store.online import SeenItems, build_request_rows, materialize, open_online_store
from feature_store.prepare import PreparedDataset
from serving.ranking import ranking_key, retrieved_blend

logger = logging.getLogger(__name__)

SYSTEMS = ("popularity", "popularity+ranker", "retrieval", "retrieval+ranker", "als")
# Users whose candidate rows are scored in one forward.
USERS_PER_BATCH = 16


@dataclass(frozen=True)
class RecommendEvalConfig:
    task: str | None = None  # the ranked task (binary); None: the model's main binary task
    k: int = 10
    retrieval_size: int = 200  # candidates per request, as the endpoint's default retrieval_size
    recall_at: int = 100
    retrieval_weight: float = 1.0  # as the endpoint's retrieval_weight
    max_users: int = 1000  # users evaluated at most (a seeded sample beyond)
    als_factors: int = 64
    als_iterations: int = 15
    als_regularization: float = 0.05
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.recall_at < 1 or self.retrieval_size < max(self.k, self.recall_at):
            raise ValueError(f"recommend evaluation: need k >= 1, recall_at >= 1 and retrieval_size >= both; got "
                             f"k {self.k}, recall_at {self.recall_at}, retrieval_size {self.retrieval_size}")
        if self.max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {self.max_users}")


@dataclass
class SystemLists:
    """Per user: the candidate list (for recall) and the top k shown."""

    candidates: list[list[Any]] = field(default_factory=list)
    shown: list[list[Any]] = field(default_factory=list)


def split_start(prepared: PreparedDataset, split: str) -> dt.datetime:
    """The first moment of `split` (validation or test) in the prepared dataset's time split."""
    if split == "train":
        raise ValueError("the /v1/recommend replay needs a split that starts after training data: validation or test")
    return dt.datetime.fromisoformat(prepared.summary()["time_split"][f"{split}_start"])


def hit_rate_and_ndcg(shown: list[list[Any]], truth: list[set[Any]], k: int) -> tuple[float, float]:
    hits, gains = [], []
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for items, liked in zip(shown, truth, strict=True):
        relevant = np.array([item in liked for item in items[:k]], dtype=np.float64)
        hits.append(float(relevant.any()))
        ideal = discounts[:min(k, len(liked))].sum()
        gains.append(float((relevant * discounts[:len(relevant)]).sum() / ideal))
    return float(np.mean(hits)), float(np.mean(gains))


def recall(candidates: list[list[Any]], truth: list[set[Any]], at: int) -> float:
    return float(np.mean([len(liked & set(items[:at])) / len(liked) for items, liked in zip(candidates, truth,
                                                                                            strict=True)]))


def system_metrics(lists: SystemLists, truth: list[set[Any]], seen: list[SeenItems], catalogue: int,
                   config: RecommendEvalConfig) -> dict[str, float]:
    hr, ndcg = hit_rate_and_ndcg(lists.shown, truth, config.k)
    shown = [item for items in lists.shown for item in items]
    seen_shown = sum(1 for items, s in zip(lists.shown, seen, strict=True) for item in items if item in s)
    return {f"hr@{config.k}": hr, f"ndcg@{config.k}": ndcg,
            f"recall@{config.recall_at}": recall(lists.candidates, truth, config.recall_at),
            "coverage": len(set(shown)) / catalogue, "seen_share": seen_shown / max(len(shown), 1)}


def _liked_in_split(prepared: PreparedDataset, split: str, user_key: str, item_key: str,
                    label: str) -> dict[Any, set[Any]]:
    rows = prepared.read_split(split, columns=[user_key, item_key, label])
    rows = rows.filter(pc.equal(pc.fill_null(rows.column(label), 0), 1))
    liked: dict[Any, set[Any]] = {}
    for user, item in zip(rows.column(user_key).to_pylist(), rows.column(item_key).to_pylist(), strict=True):
        liked.setdefault(user, set()).add(item)
    return liked


def _als_lists(prepared: PreparedDataset, before: dt.datetime, users: list[Any], seen: list[SeenItems],
               warm: list[bool], popular: list[list[Any]], config: RecommendEvalConfig) -> SystemLists:
    """implicit's ALS on every (user, item) interaction before `before` (confidence 1 each); users
    it has no factors for get popularity."""
    from implicit.als import AlternatingLeastSquares
    from scipy.sparse import csr_matrix
    from threadpoolctl import threadpool_limits

    definition = prepared.definition()
    user_key, item_key = definition.user.join_key, definition.item.join_key
    events = prepared.offline_store().read_view(definition.events_name,
                                                columns=[user_key, item_key, definition.timestamp_field])
    moment = pa.scalar(before, type=events.schema.field(definition.timestamp_field).type)
    events = events.filter(pc.less(events.column(definition.timestamp_field), moment))
    user_values = events.column(user_key).to_pylist()
    item_values = events.column(item_key).to_pylist()
    user_index = {u: i for i, u in enumerate(dict.fromkeys(user_values))}
    item_list = list(dict.fromkeys(item_values))
    item_index = {v: i for i, v in enumerate(item_list)}
    pairs = {(user_index[u], item_index[v]) for u, v in zip(user_values, item_values, strict=True)}
    rows, cols = (np.array(x, dtype=np.int64) for x in zip(*pairs))
    matrix = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                        shape=(len(user_index), len(item_list)))
    with threadpool_limits(1, "blas"):  # implicit's advice: its own threads, single-threaded BLAS
        als = AlternatingLeastSquares(factors=config.als_factors, regularization=config.als_regularization,
                                      iterations=config.als_iterations, random_state=config.seed)
        als.fit(matrix, show_progress=False)
    lists = SystemLists()
    n = max(config.recall_at, config.k)
    for user, user_seen, is_warm, fallback in zip(users, seen, warm, popular, strict=True):
        if is_warm and user in user_index:
            ids, _ = als.recommend(user_index[user], matrix[user_index[user]], N=n + len(user_seen),
                                   filter_already_liked_items=True)
            items = user_seen.without(item_list[i] for i in ids)[:n]
        else:
            items = fallback[:n]
        lists.candidates.append(items)
        lists.shown.append(items[:config.k])
    return lists


def evaluate_recommend(loaded: Any, retriever: Any, prepared: PreparedDataset, split: str,
                       config: RecommendEvalConfig) -> dict[str, Any]:
    """Replays /v1/recommend for the split's users (see the module's docstring). `loaded`: the
    registered model (registry.models.RegisteredModel); `retriever`: its CandidateRetriever."""
    from serving.retrieval import user_state
    from serving.servable import ServableModel

    started = time.perf_counter()
    servable = ServableModel(name=loaded.name, version=str(loaded.version), alias=None, uri=loaded.uri,
                             model=loaded.model, transforms=loaded.transforms, spec=loaded.spec,
                             definition=loaded.definition, retriever=retriever)
    spec, definition = loaded.spec, loaded.definition
    task = config.task or next((t.name for t in spec.tasks if t.kind == "binary" and t.role == "main"), None)
    if task is None or spec.task(task).kind != "binary":
        raise ValueError(f"the /v1/recommend replay ranks by a binary task; the model has "
                         f"{[(t.name, t.kind) for t in spec.tasks]}")
    moment = split_start(prepared, split)
    trained_on = retriever.index.metadata.get("splits", []) if retriever.has_index else []
    if split in trained_on:
        raise ValueError(f"the retrieval index of {loaded.name} version {loaded.version} was trained on the {split} "
                         f"split ({trained_on}); replay /v1/recommend on a split it has not seen")
    liked = _liked_in_split(prepared, split, definition.user.join_key, definition.item.join_key,
                            spec.task(task).label)
    users = sorted(liked)
    if len(users) > config.max_users:
        chosen = np.random.default_rng(config.seed).choice(len(users), config.max_users, replace=False)
        users = [users[i] for i in sorted(chosen)]
    if not users:
        raise ValueError(f"split {split!r} has no positive of task {task!r}: nothing to recommend against")
    truth = [liked[u] for u in users]
    lists = {name: SystemLists() for name in SYSTEMS}
    seen, warm, popular = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "online.sqlite"
        with open_online_store(store_path, create=True) as store:
            materialize(prepared.offline_store(), definition, store, as_of=moment)
            for start in range(0, len(users), USERS_PER_BATCH):
                block = users[start:start + USERS_PER_BATCH]
                states = [user_state(store, definition, user, None, now=moment) for user in block]
                block_popular = [retriever.popular(config.retrieval_size, s.seen) for s in states]
                retrieved, logits = _retrieved(retriever, states, block_popular, config.retrieval_size)
                for name, candidates, block_logits in (("popularity", block_popular, [None] * len(block)),
                                                       ("retrieval", retrieved, logits)):
                    lists[name].candidates += candidates
                    lists[name].shown += [c[:config.k] for c in candidates]
                    ranked = _rank(servable, store, definition, task, block, candidates, block_logits, moment,
                                   config)
                    lists[f"{name}+ranker"].candidates += candidates
                    lists[f"{name}+ranker"].shown += ranked
                seen += [s.seen for s in states]
                warm += [not s.cold_start for s in states]
                popular += block_popular
    if importlib.util.find_spec("implicit") is None:
        logger.info("/v1/recommend replay: the ALS peer is skipped, implicit is not installed (pip install implicit)")
        del lists["als"]
    else:
        lists["als"] = _als_lists(prepared, moment, users, seen, warm, popular, config)
    catalogue = len(loaded.transforms.vocabularies[spec.item_id].values)
    warm_index = [i for i, w in enumerate(warm) if w]

    def subset(items: list, index: list[int]) -> list:
        return [items[i] for i in index]

    systems, warm_systems = {}, {}
    for name, system in lists.items():
        systems[name] = system_metrics(system, truth, seen, catalogue, config)
        if warm_index:
            warm_systems[name] = system_metrics(
                SystemLists(subset(system.candidates, warm_index), subset(system.shown, warm_index)),
                subset(truth, warm_index), subset(seen, warm_index), catalogue, config)
    return {"split": split, "as_of": moment.isoformat(), "task": task, "users": len(users),
            "warm_users": len(warm_index), "liked_items": sum(len(t) for t in truth),
            "retrieval_index": retriever.has_index, "settings": {
                "k": config.k, "retrieval_size": config.retrieval_size, "recall_at": config.recall_at,
                "als": {"factors": config.als_factors, "iterations": config.als_iterations,
                        "regularization": config.als_regularization}},
            "systems": systems, "warm_systems": warm_systems, "seconds": round(time.perf_counter() - started, 1)}


def _retrieved(retriever: Any, states: list, popular: list[list[Any]],
               n: int) -> tuple[list[list[Any]], list[list[float] | None]]:
    """The endpoint's candidates for each user and their retrieval logits: the index for users with
    stored features, popularity (no logits) for the others."""
    out: list[list[Any]] = [list(p) for p in popular]
    logits: list[list[float] | None] = [None] * len(states)
    warm = [i for i, s in enumerate(states) if not s.cold_start]
    if retriever.has_index and warm:
        rows = pa.concat_tables([states[i].rows for i in warm])
        ids, values = retriever.retrieve_many(rows, n, [states[i].seen for i in warm])
        for i, items, user_logits in zip(warm, ids, values, strict=True):
            out[i], logits[i] = items, user_logits
    return out, logits


def _rank(servable: Any, store: Any, definition: Any, task: str, users: list[Any], candidates: list[list[Any]],
          logits: list[list[float] | None], moment: dt.datetime, config: RecommendEvalConfig) -> list[list[Any]]:
    """Each user's candidates in the endpoint's order, top k: the request rows and the ranker's
    scores it would compute (one forward for the block), ranked as the ingress ranks them (task +
    retrieval logit for retrieved candidates, the task's score otherwise)."""
    tables = [build_request_rows(store, definition, user, items, None, now=moment)[0]
              for user, items in zip(users, candidates, strict=True)]
    scores = servable.score(task, pa.concat_tables(tables)).scores
    out, start = [], 0
    for items, user_logits in zip(candidates, logits, strict=True):
        block = scores[start:start + len(items)].tolist()
        blend = retrieved_blend(task, config.retrieval_weight) if user_logits is not None else None
        key = ranking_key(blend, {task: block}, user_logits) if blend and items else block
        out.append([items[i] for i in np.argsort(-np.asarray(key), kind="stable")[:config.k]])
        start += len(items)
    return out


def recommend_markdown(data: dict[str, Any]) -> list[str]:
    """The report's section for a replay's result (empty when there is none)."""
    if not data:
        return []
    names = list(next(iter(data["systems"].values())))
    lines = ["## /v1/recommend replayed", "",
             f"As of {data['as_of']} (the {data['split']} split's start), for {data['users']} users with a positive "
             f"of `{data['task']}` in the split ({data['warm_users']} with stored features; the others are new and "
             f"get popularity), {data['liked_items']} liked items in all. Retrieval index: "
             f"{'yes' if data['retrieval_index'] else 'none (retrieval = popularity)'}.", ""]
    for title, systems in (("all users", data["systems"]), ("users with stored features", data["warm_systems"])):
        if systems:
            lines += [f"### {title}", "", "| system | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            lines += [f"| {name} | " + " | ".join(_number(m[n]) for n in names) + " |" for name, m in systems.items()]
            lines.append("")
    return lines


def _number(value: float) -> str:
    return f"{value:.4f}"
