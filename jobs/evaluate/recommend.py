"""Top-N evaluation of /v1/recommend's lists, on the split protocol the dataset was prepared with
(`grec data prepare --split`: user_time, leave_one_out or global_time), against the recommenders a
team would run instead, on the same users, histories and seen sets.

For every user with an event in the split and at least one relevant item in it (recommend/offline.py):
the user's history is what came before (the seen set the lists leave out), the moment is the user's
first event of the split, and the truth is the user's items in the split that are positives of the
target task (every event for implicit-feedback tasks). Every list ranks the whole catalogue: no
sampled negatives.

Systems:
- `grec`: the version's recommendation stage and ranker through `recommend.recommender.rank_lists`,
  the code the endpoint and the batch job run;
- the peers of jobs/evaluate/peers.py, each fitted on the interactions before the split after
  `trials` settings tried on the validation split (fitted on the training split).
Metrics (recommend/metrics.py): HR@k, NDCG@k, MRR@k, recall@R, catalogue coverage, novelty (mean
popularity rank of the items shown); paired bootstrap intervals of each peer's difference to grec
over users; users with fewer than `cold_history` interactions reported apart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from feature_store.options import SPLITS
from jobs.evaluate.bootstrap import bootstrap_intervals
from jobs.evaluate.peers import PEERS, PeerData, skip_reason, tune_and_score
from recommend.metrics import coverage, ndcg, novelty, per_user_metrics
from recommend.offline import Interactions, SplitUsers, read_interactions, relevant_runs, split_users
from recommend.popularity import ItemPopularity
from recommend.ranker import Ranker
from recommend.recommender import rank_lists
from recommend.rows import ItemRows, latest_item_rows, row_task_scorer
from recommend.stage import RecommendationStage
from recommend.threads import torch_threads

logger = logging.getLogger(__name__)

GREC = "grec"


@dataclass(frozen=True)
class RecommendEvalConfig:
    task: str | None = None  # the target: a binary task of the dataset; None: its implicit task, else its main one
    k: int = 10
    recall_at: int = 50
    max_users: int | None = None  # None: every user (a seeded sample of at most this many otherwise)
    peers: tuple[str, ...] = PEERS
    trials: int = 12  # settings tried per peer on validation
    resamples: int = 1000
    confidence: float = 0.95
    cold_history: int = 5  # users with fewer interactions before the split form the cold-start slice
    block_users: int = 64  # users ranked per call of the recommendation path
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.recall_at < 1:
            raise ValueError(f"k and recall_at must be >= 1, got {self.k} and {self.recall_at}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {self.max_users}")
        unknown = sorted(set(self.peers) - set(PEERS))
        if unknown:
            raise ValueError(f"unknown peers {unknown}; peers: {list(PEERS)}")

    @property
    def depth(self) -> int:
        return max(self.k, self.recall_at)


@dataclass
class SystemLists:
    """Per system, each user's list as catalogue rows [users, depth] (0 pads), and what it cost."""

    rows: dict[str, np.ndarray] = field(default_factory=dict)
    details: dict[str, dict[str, Any]] = field(default_factory=dict)


def target_task(definition: Any, requested: str | None) -> tuple[str, str | None]:
    """(task, label column of its relevant events, None for every event)."""
    binary = [t for t in definition.tasks if str(t.kind) == "binary"]
    if requested is not None:
        task = next((t for t in binary if t.name == requested), None)
        if task is None:
            raise ValueError(f"--recommend-task {requested!r}: expected one of the dataset's binary tasks "
                             f"{[t.name for t in binary]}")
    else:
        task = next((t for t in binary if t.implicit), None) or next((t for t in binary if str(t.role) == "main"),
                                                                     binary[0] if binary else None)
        if task is None:
            raise ValueError(f"dataset {definition.name!r} has no binary task to judge lists by")
    return task.name, (None if task.implicit else task.label)


def evaluate_recommend(loaded: Any, stage: RecommendationStage, prepared: Any, split: str,
                       config: RecommendEvalConfig,
                       external: Mapping[str, Mapping[Any, Sequence[Any]]] | None = None) -> dict[str, Any]:
    """The evaluation of the module's docstring; `loaded` a registry.models.RegisteredModel whose
    stage is `stage` (built on the splits before `split`). `external`: lists of systems run
    elsewhere (name -> user id -> ranked item ids), judged the same way (a user without a list
    counts as an empty list)."""
    started = time.perf_counter()
    if split == "train":
        raise ValueError("lists are judged on a split after training data: validation or test")
    built_on = stage.metadata.get("splits", [])
    if split in built_on:
        raise ValueError(f"the recommendation stage of {loaded.name} version {loaded.version} was fitted on the "
                         f"{split} split ({built_on}); judge it on a split it has not seen")
    definition = prepared.definition()
    task, label = target_task(definition, config.task)
    interactions = read_interactions(prepared, [label] if label else [], SPLITS[:SPLITS.index(split) + 1])
    users = _judged(prepared, split, interactions, task, label, config)
    if not users.user_ids:
        raise ValueError(f"split {split!r} has no user with a relevant item for {task!r}: nothing to judge")
    lists = SystemLists()
    lists.rows[GREC], lists.details[GREC] = _grec_lists(loaded, stage, prepared, split, users, task, config)
    _peer_lists(lists, stage, prepared, split, users, interactions, task, label, config)
    for name, by_user in (external or {}).items():
        lists.rows[name] = _listed_rows(by_user, users, stage, config.depth)
        lists.details[name] = {"external": True, "users_listed": sum(1 for u in users.user_ids if u in by_user)}
    summary = summarize(lists, users, task, stage, interactions.before(split), config)
    summary.update(split=split, protocol=prepared.summary().get("split", {"protocol": "global_time"}),
                   seconds=round(time.perf_counter() - started, 1))
    return summary


def _judged(prepared: Any, split: str, interactions: Interactions, task: str, label: str | None,
            config: RecommendEvalConfig) -> SplitUsers:
    """The split's users with a relevant item (a seeded sample of `config.max_users` of them), only
    those built (recommend.offline.split_users)."""
    keep = relevant_runs(interactions, split, label).tolist()
    if config.max_users is not None and len(keep) > config.max_users:
        chosen = np.random.default_rng(config.seed).choice(len(keep), config.max_users, replace=False)
        keep = [keep[i] for i in sorted(chosen)]
    return split_users(prepared, split, {task: label}, interactions, keep)


def _item_rows_before(prepared: Any, split: str, definition: Any) -> ItemRows:
    """Each item's latest features in the splits before `split`, folded batch by batch."""
    batches = (batch for before in SPLITS[:SPLITS.index(split)] for batch in prepared.iter_split(before))
    return ItemRows(latest_item_rows(batches, definition), definition)


def _grec_lists(loaded: Any, stage: RecommendationStage, prepared: Any, split: str, users: SplitUsers, task: str,
                config: RecommendEvalConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """The recommendation path's lists for every user, in blocks."""
    started = time.process_time()
    ranker = Ranker(loaded.model, loaded.transforms, loaded.spec)
    item_rows = _item_rows_before(prepared, split, loaded.definition)
    rows = np.zeros((len(users.user_ids), config.depth), dtype=np.int64)
    with torch_threads(1):
        _rank_blocks(stage, users, task, config, ranker, item_rows, rows)
    weights = stage.blends.get(task, {task: 1.0})
    return rows, {"blend": weights, "ranking_cpu_s": round(time.process_time() - started, 2),
                  "sources": stage.sources, "stage_validation": stage.metadata.get("validation", {})}


def _rank_blocks(stage: RecommendationStage, users: SplitUsers, task: str, config: RecommendEvalConfig,
                 ranker: Ranker, item_rows: ItemRows, rows: np.ndarray) -> None:
    """Fills `rows` with each user's list, a block of users per call of the recommendation path."""
    for start in range(0, len(users.user_ids), config.block_users):
        block = users.histories[start:start + config.block_users]
        scorer = row_task_scorer(lambda name, raw: ranker.score(name, raw).scores, ranker.binary_tasks, users.rows,
                                 item_rows, offset=start)
        for index, ranked in enumerate(rank_lists(stage, block, task, config.depth, score_tasks=scorer)):
            listed = [stage.row_of[item] for item in ranked.items]
            rows[start + index, :len(listed)] = listed


def _listed_rows(by_user: Mapping[Any, Sequence[Any]], users: SplitUsers, stage: RecommendationStage,
                 depth: int) -> np.ndarray:
    """[users, depth] catalogue rows of lists given as item ids (items outside the catalogue count as
    misses: row 0 is never relevant)."""
    rows = np.zeros((len(users.user_ids), depth), dtype=np.int64)
    for index, user in enumerate(users.user_ids):
        listed = [stage.row_of.get(item, 0) for item in list(by_user.get(user, ()))[:depth]]
        rows[index, :len(listed)] = listed
    return rows


def _catalogue_rows(interactions: Interactions, stage: RecommendationStage) -> np.ndarray:
    """The stage's catalogue row (1..N; 0 outside it) of each event of `interactions`."""
    row_of_code = np.fromiter((stage.row_of.get(i, 0) for i in interactions.item_values.tolist()), dtype=np.int64,
                              count=len(interactions.item_values))
    return row_of_code[interactions.item_codes]


def _peer_data(interactions: Interactions, stage: RecommendationStage, users: SplitUsers) -> PeerData:
    """The peers' view of `interactions` (the events they may fit on) and of the users to score."""
    columns = _catalogue_rows(interactions, stage)
    known = columns > 0
    # Users in code order (the events' order), each numbered where it first comes.
    codes, rows = np.unique(interactions.user_codes[known], return_inverse=True)
    user_ids = interactions.user_values[codes].tolist()
    user_row = {u: r for r, u in enumerate(user_ids)}
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows.astype(np.int64), columns[known] - 1)),
                           shape=(len(user_ids), stage.num_items))
    matrix.data[:] = 1.0  # repeats count once
    popularity = ItemPopularity.from_events(columns[known], interactions.times[known], stage.num_items)
    return PeerData(matrix, user_row, popularity, users.user_ids, np.array([h.now for h in users.histories]))


def _top_rows(scores: np.ndarray, users: SplitUsers, stage: RecommendationStage, depth: int) -> np.ndarray:
    """[users, depth] catalogue rows (1..N) of each user's best unseen items."""
    masked = scores.astype(np.float64).copy()
    for index, history in enumerate(users.histories):
        masked[index, [stage.row_of[i] - 1 for i in history.exclude if i in stage.row_of]] = -np.inf
    top = np.argsort(-masked, axis=1, kind="stable")[:, :depth]
    return np.where(np.isfinite(np.take_along_axis(masked, top, axis=1)), top + 1, 0)


def _truth_matrix(users: SplitUsers, task: str, stage: RecommendationStage) -> tuple[np.ndarray, np.ndarray]:
    """(relevant [users, N + 1] booleans by catalogue row, |truth| per user)."""
    relevant = np.zeros((len(users.user_ids), stage.num_items + 1), dtype=bool)
    for index, truth in enumerate(users.truth[task]):
        relevant[index, [stage.row_of[i] for i in truth if i in stage.row_of]] = True
    return relevant, np.array([len(t) for t in users.truth[task]], dtype=np.int64)


def _peer_lists(lists: SystemLists, stage: RecommendationStage, prepared: Any, split: str, users: SplitUsers,
                interactions: Interactions, task: str, label: str | None, config: RecommendEvalConfig) -> None:
    peers = [p for p in config.peers if p in PEERS]
    if not peers:
        return
    final = _peer_data(interactions.before(split), stage, users)
    tuning_users = None
    if split != "validation" and SPLITS.index(split) > 1:
        tuning_users = _judged(prepared, "validation", interactions, task, label,
                               RecommendEvalConfig(max_users=config.max_users, seed=config.seed))
    for peer in peers:
        reason = skip_reason(peer, stage.num_items)
        if reason is not None:
            lists.details[peer] = {"skipped": reason}
            logger.info("top-N evaluation: %s skipped: %s", peer, reason)
            continue
        if tuning_users is None or not tuning_users.user_ids:
            tuned = tune_and_score(peer, final, lambda scores: 0.0, final, 1, config.seed)
        else:
            tuning = _peer_data(interactions.before("validation"), stage, tuning_users)
            relevant, counts = _truth_matrix(tuning_users, task, stage)

            def judge(scores: np.ndarray) -> float:
                top = _top_rows(scores, tuning_users, stage, config.k)
                return float(ndcg(np.take_along_axis(relevant, top, axis=1) & (top > 0), counts, config.k).mean())

            tuned = tune_and_score(peer, tuning, judge, final, config.trials, config.seed)
        lists.rows[peer] = _top_rows(tuned.scores, users, stage, config.depth)
        lists.details[peer] = {"params": tuned.params, "validation_ndcg": round(tuned.validation, 5),
                               "trials": len(tuned.trials), "tuning_cpu_s": round(tuned.tuning_cpu_s, 2),
                               "fit_cpu_s": round(tuned.fit_cpu_s, 2)}
        logger.info("top-N evaluation: %s tuned (%d trials, validation NDCG@%d %.4f): %s", peer, len(tuned.trials),
                    config.k, tuned.validation, tuned.params)


def per_user(lists: np.ndarray, relevant: np.ndarray, counts: np.ndarray, config: RecommendEvalConfig
             ) -> dict[str, np.ndarray]:
    hits = np.take_along_axis(relevant, lists, axis=1) & (lists > 0)
    return per_user_metrics(hits, counts, config.k, config.recall_at)


def summarize(lists: SystemLists, users: SplitUsers, task: str, stage: RecommendationStage,
              history: Interactions, config: RecommendEvalConfig) -> dict[str, Any]:
    """Means, slices and paired intervals of every system's lists (see the module's docstring)."""
    relevant, counts = _truth_matrix(users, task, stage)
    item_counts = np.bincount(_catalogue_rows(history, stage), minlength=stage.num_items + 1)
    rank = np.empty(stage.num_items + 1, dtype=np.float64)
    rank[np.argsort(-item_counts, kind="stable")] = np.arange(1, stage.num_items + 2)
    metrics = {name: per_user(rows, relevant, counts, config) for name, rows in lists.rows.items()}
    sizes = users.history_sizes
    cold = sizes < config.cold_history
    systems, cold_systems, intervals = {}, {}, {}
    for name, values in metrics.items():
        systems[name] = {m: float(v.mean()) for m, v in values.items()}
        systems[name]["coverage"] = coverage(lists.rows[name], stage.num_items, config.k)
        systems[name]["novelty"] = novelty(lists.rows[name], rank, config.k)
        if cold.any():
            cold_systems[name] = {m: float(v[cold].mean()) for m, v in values.items()}
    names = list(metrics[GREC])
    for name, values in metrics.items():
        if name == GREC:
            continue
        differences = np.stack([values[m] - metrics[GREC][m] for m in names])  # [metrics, users]
        low, high = bootstrap_intervals(lambda idx, d=differences: d[:, idx].mean(axis=1), differences.shape[1],
                                        resamples=config.resamples, confidence=config.confidence, seed=config.seed)
        intervals[name] = {m: {"difference": float(differences[i].mean()), "low": float(low[i]),
                               "high": float(high[i])} for i, m in enumerate(names)}
    return {"task": task, "users": len(users.user_ids), "cold_users": int(cold.sum()),
            "relevant_items": int(counts.sum()), "catalogue": stage.num_items,
            "settings": {"k": config.k, "recall_at": config.recall_at, "trials": config.trials,
                         "resamples": config.resamples, "confidence": config.confidence,
                         "cold_history": config.cold_history, "full_ranking": True},
            "systems": systems, "cold_systems": cold_systems, "intervals_vs_grec": intervals,
            "details": lists.details, "per_user": {name: {m: v.tolist() for m, v in values.items()}
                                                  for name, values in metrics.items()},
            "user_ids": list(users.user_ids)}


def recommend_markdown(data: dict[str, Any]) -> list[str]:
    """The report's section for a top-N evaluation (empty when there is none)."""
    if not data:
        return []
    protocol = data["protocol"].get("protocol", "global_time")
    names = list(next(iter(data["systems"].values())))
    lines = ["## Top-N recommendations", "",
             f"Split {data['split']} ({protocol}), target `{data['task']}`: {data['users']} users with a relevant "
             f"item ({data['cold_users']} with fewer than {data['settings']['cold_history']} interactions before), "
             f"{data['relevant_items']} relevant items; every list ranks the whole catalogue of "
             f"{data['catalogue']} items minus the user's seen ones (no sampled negatives). Peers tuned with "
             f"{data['settings']['trials']} settings each on the validation split.", "",
             "| system | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {name} | " + " | ".join(f"{m[n]:.4f}" for n in names) + " |" for name, m in data["systems"].items()]
    if data["intervals_vs_grec"]:
        k = data["settings"]["k"]
        lines += ["", f"Difference to grec (peer - grec), paired bootstrap {data['settings']['confidence']:.0%} "
                      f"interval over users:", "", f"| peer | ndcg@{k} | hr@{k} |", "|---|---|---|"]
        for name, values in data["intervals_vs_grec"].items():
            cells = [f"{values[m]['difference']:+.4f} [{values[m]['low']:+.4f}, {values[m]['high']:+.4f}]"
                     for m in (f"ndcg@{k}", f"hr@{k}")]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines
