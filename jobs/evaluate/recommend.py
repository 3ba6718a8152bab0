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
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from feature_store.options import SPLITS
from jobs.evaluate.bootstrap import bootstrap_intervals
from jobs.evaluate.catalogue_users import catalogue_users
from jobs.evaluate.peers import PEERS, PeerData, PeerScorer, PeerUsers, skip_reason, tune_peer
from recommend.heap import release_freed_heap
from recommend.metrics import ShownItems, ndcg, per_user_metrics
from recommend.offline import (Interactions, SplitUsers, first_rows, read_interactions, relevant_runs,
                               split_user_ids, users_of)
from recommend.popularity import ItemPopularity
from recommend.ranker import Ranker
from recommend.recommender import rank_lists
from recommend.rows import ItemRows, item_columns, latest_item_rows, row_task_scorer
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
    held_users: int = 256  # users whose lists and [users, catalogue] scores the driver holds at once
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k < 1 or self.recall_at < 1:
            raise ValueError(f"k and recall_at must be >= 1, got {self.k} and {self.recall_at}")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users must be >= 1, got {self.max_users}")
        if self.block_users < 1 or self.held_users < 1:
            raise ValueError(f"block_users and held_users must be >= 1, got {self.block_users} and {self.held_users}")
        unknown = sorted(set(self.peers) - set(PEERS))
        if unknown:
            raise ValueError(f"unknown peers {unknown}; peers: {list(PEERS)}")

    @property
    def depth(self) -> int:
        return max(self.k, self.recall_at)


class SystemLists:
    """What every system's lists earn, folded block by block of the judged users: per-user metrics
    (in the judged users' order), coverage and novelty (recommend.metrics.ShownItems), and what the
    system cost. No list outlives its block."""

    def __init__(self, popularity_rank: np.ndarray, config: RecommendEvalConfig) -> None:
        self.popularity_rank, self.config = popularity_rank, config
        self.blocks: dict[str, list[dict[str, np.ndarray]]] = {}
        self.shown: dict[str, ShownItems] = {}
        self.details: dict[str, dict[str, Any]] = {}

    def add(self, name: str, lists: np.ndarray, relevant: np.ndarray, counts: np.ndarray) -> None:
        """`lists`: [block users, depth] catalogue rows (0 pads); `relevant`, `counts`: the block's
        relevant items by catalogue row and |truth| per user."""
        hits = np.take_along_axis(relevant, lists, axis=1) & (lists > 0)
        self.blocks.setdefault(name, []).append(per_user_metrics(hits, counts, self.config.k, self.config.recall_at))
        self.shown.setdefault(name, ShownItems(self.popularity_rank, self.config.k)).add(lists)

    def per_user(self) -> dict[str, dict[str, np.ndarray]]:
        """Per system, each metric of every judged user."""
        return {name: {m: np.concatenate([block[m] for block in blocks]) for m in blocks[0]}
                for name, blocks in self.blocks.items()}


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
    counts as an empty list).

    The driver holds the events as recommend.offline.Interactions (compact arrays), each judged
    user's first row of the split and per-user metrics; lists, peer scores and histories exist for
    `config.held_users` users at a time."""
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
    positions = _judged(interactions, split, label, config.max_users, config.seed)
    if not positions:
        raise ValueError(f"split {split!r} has no user with a relevant item for {task!r}: nothing to judge")
    row_of_code = _row_of_code(interactions, stage)
    lists = SystemLists(_popularity_rank(interactions.before(split), stage, row_of_code), config)
    lists.details[GREC] = {}  # grec first in the report's details, as in its systems; filled after ranking
    peers = _tuned_peers(lists, stage, split, interactions, row_of_code, label, config)
    user_ids = split_user_ids(interactions, split, positions)
    for name, by_user in (external or {}).items():
        lists.details[name] = {"external": True, "users_listed": sum(1 for u in user_ids if u in by_user)}
    grec = _GrecLists(loaded, stage, prepared, split, user_ids, task, config)
    history_sizes, relevant_items = [], 0
    for start in range(0, len(positions), config.held_users):
        block = positions[start:start + config.held_users]
        judged = catalogue_users(interactions, split, label, block, row_of_code)
        relevant = judged.relevance(stage.num_items)
        lists.add(GREC, grec.lists(interactions, block, start), relevant, judged.truth_counts)
        for name, scorer in peers.items():
            lists.add(name, judged.top_rows(scorer(PeerUsers(judged.ids, judged.now)), config.depth), relevant,
                      judged.truth_counts)
        for name, by_user in (external or {}).items():
            lists.add(name, _listed_rows(by_user, judged.ids, stage, config.depth), relevant, judged.truth_counts)
        history_sizes.append(judged.history_sizes)
        relevant_items += int(judged.truth_counts.sum())
    lists.details[GREC] = grec.details()
    summary = summarize(lists, user_ids, np.concatenate(history_sizes), relevant_items, task, stage, config)
    summary.update(split=split, protocol=prepared.summary().get("split", {"protocol": "global_time"}),
                   seconds=round(time.perf_counter() - started, 1))
    return summary


def _judged(interactions: Interactions, split: str, label: str | None, max_users: int | None,
            seed: int) -> list[int]:
    """Positions (recommend.offline.split_runs's order) of the split's users with a relevant item, a
    seeded sample of `max_users` of them."""
    keep = relevant_runs(interactions, split, label).tolist()
    if max_users is not None and len(keep) > max_users:
        chosen = np.random.default_rng(seed).choice(len(keep), max_users, replace=False)
        keep = [keep[i] for i in sorted(chosen)]
    return keep


def _item_rows_before(prepared: Any, split: str, definition: Any) -> ItemRows:
    """Each item's latest features in the splits before `split`, folded batch by batch over the
    columns ItemRows keeps."""
    columns = [*item_columns(definition), *([definition.timestamp_field] if definition.timestamp_field else [])]
    batches = (batch for before in SPLITS[:SPLITS.index(split)]
               for batch in prepared.iter_split(before, columns=columns))
    return ItemRows(latest_item_rows(batches, definition), definition)


class _GrecLists:
    """The recommendation path's lists (the ranker and the stage), for one block of users at a time."""

    def __init__(self, loaded: Any, stage: RecommendationStage, prepared: Any, split: str, user_ids: list[Any],
                 task: str, config: RecommendEvalConfig) -> None:
        started = time.process_time()
        self.stage, self.split, self.task, self.config = stage, split, task, config
        self.ranker = Ranker(loaded.model, loaded.transforms, loaded.spec)
        self.item_rows = _item_rows_before(prepared, split, loaded.definition)
        self.user_rows = first_rows(prepared, split, user_ids)  # one row per judged user, read once
        self.cpu_s = time.process_time() - started

    def lists(self, interactions: Interactions, positions: list[int], start: int) -> np.ndarray:
        """[users, depth] catalogue rows of the lists of the judged users `positions`, the judged
        users from `start` on."""
        started = time.process_time()
        users = users_of(interactions, self.split, {}, positions,
                         self.user_rows.slice(start, len(positions)))
        rows = np.zeros((len(positions), self.config.depth), dtype=np.int64)
        with torch_threads(1):
            _rank_blocks(self.stage, users, self.task, self.config, self.ranker, self.item_rows, rows)
        release_freed_heap()
        self.cpu_s += time.process_time() - started
        return rows

    def details(self) -> dict[str, Any]:
        return {"blend": self.stage.blends.get(self.task, {self.task: 1.0}), "ranking_cpu_s": round(self.cpu_s, 2),
                "sources": self.stage.sources, "stage_validation": self.stage.metadata.get("validation", {})}


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


def _listed_rows(by_user: Mapping[Any, Sequence[Any]], user_ids: list[Any], stage: RecommendationStage,
                 depth: int) -> np.ndarray:
    """[users, depth] catalogue rows of lists given as item ids (items outside the catalogue count as
    misses: row 0 is never relevant)."""
    rows = np.zeros((len(user_ids), depth), dtype=np.int64)
    for index, user in enumerate(user_ids):
        listed = [stage.row_of.get(item, 0) for item in list(by_user.get(user, ()))[:depth]]
        rows[index, :len(listed)] = listed
    return rows


def _row_of_code(interactions: Interactions, stage: RecommendationStage) -> np.ndarray:
    """The stage's catalogue row (1..N; 0 outside it) of each item code of `interactions`."""
    return np.fromiter((stage.row_of.get(i, 0) for i in interactions.item_values.tolist()), dtype=np.int64,
                       count=len(interactions.item_values))


def _popularity_rank(history: Interactions, stage: RecommendationStage, row_of_code: np.ndarray) -> np.ndarray:
    """Each catalogue row's popularity rank (1 = most events in `history`), for novelty."""
    item_counts = np.bincount(row_of_code[history.item_codes], minlength=stage.num_items + 1)
    rank = np.empty(stage.num_items + 1, dtype=np.float64)
    rank[np.argsort(-item_counts, kind="stable")] = np.arange(1, stage.num_items + 2)
    return rank


def _peer_data(interactions: Interactions, stage: RecommendationStage, row_of_code: np.ndarray) -> PeerData:
    """The peers' view of `interactions`: the events they may fit on."""
    columns = row_of_code[interactions.item_codes]
    known = columns > 0
    # Users in code order (the events' order), each numbered where it first comes.
    codes, rows = np.unique(interactions.user_codes[known], return_inverse=True)
    user_ids = interactions.user_values[codes].tolist()
    user_row = {u: r for r, u in enumerate(user_ids)}
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows.astype(np.int64), columns[known] - 1)),
                           shape=(len(user_ids), stage.num_items))
    matrix.data[:] = 1.0  # repeats count once
    popularity = ItemPopularity.from_events(columns[known], interactions.times[known], stage.num_items)
    return PeerData(matrix, user_row, popularity)


def _tuning_ndcg(scorer: PeerScorer, interactions: Interactions, positions: list[int], label: str | None,
                 row_of_code: np.ndarray, stage: RecommendationStage, config: RecommendEvalConfig) -> float:
    """Mean NDCG@k of `scorer`'s lists for the validation users at `positions`, a block at a time."""
    values = []
    for start in range(0, len(positions), config.held_users):
        judged = catalogue_users(interactions, "validation", label, positions[start:start + config.held_users],
                                 row_of_code)
        top = judged.top_rows(scorer(PeerUsers(judged.ids, judged.now)), config.k)
        relevant = np.take_along_axis(judged.relevance(stage.num_items), top, axis=1) & (top > 0)
        values.append(ndcg(relevant, judged.truth_counts, config.k))
    return float(np.concatenate(values).mean())


def _tuned_peers(lists: SystemLists, stage: RecommendationStage, split: str, interactions: Interactions,
                 row_of_code: np.ndarray, label: str | None, config: RecommendEvalConfig) -> dict[str, PeerScorer]:
    """Each peer tuned on validation and fitted on the events before `split` (its details in
    `lists`), as a scorer of any users."""
    peers = [p for p in config.peers if p in PEERS]
    if not peers:
        return {}
    final = _peer_data(interactions.before(split), stage, row_of_code)
    tuning, tuning_users = None, []
    if split != "validation" and SPLITS.index(split) > 1:
        tuning_users = _judged(interactions, "validation", label, config.max_users, config.seed)
    scorers = {}
    for peer in peers:
        reason = skip_reason(peer, stage.num_items)
        if reason is not None:
            lists.details[peer] = {"skipped": reason}
            logger.info("top-N evaluation: %s skipped: %s", peer, reason)
            continue
        if not tuning_users:
            tuned = tune_peer(peer, final, lambda scorer: 0.0, final, 1, config.seed)
        else:
            tuning = tuning or _peer_data(interactions.before("validation"), stage, row_of_code)
            tuned = tune_peer(peer, tuning, lambda scorer: _tuning_ndcg(scorer, interactions, tuning_users, label,
                                                                        row_of_code, stage, config),
                              final, config.trials, config.seed)
        scorers[peer] = tuned.scorer
        lists.details[peer] = {"params": tuned.params, "validation_ndcg": round(tuned.validation, 5),
                               "trials": len(tuned.trials), "tuning_cpu_s": round(tuned.tuning_cpu_s, 2),
                               "fit_cpu_s": round(tuned.fit_cpu_s, 2)}
        logger.info("top-N evaluation: %s tuned (%d trials, validation NDCG@%d %.4f): %s", peer, len(tuned.trials),
                    config.k, tuned.validation, tuned.params)
    return scorers


def summarize(lists: SystemLists, user_ids: list[Any], history_sizes: np.ndarray, relevant_items: int, task: str,
              stage: RecommendationStage, config: RecommendEvalConfig) -> dict[str, Any]:
    """Means, slices and paired intervals of every system's lists (see the module's docstring);
    `history_sizes`: each judged user's events before the split; `relevant_items`: their relevant
    items in all."""
    metrics = lists.per_user()
    cold = history_sizes < config.cold_history
    systems, cold_systems, intervals = {}, {}, {}
    for name, values in metrics.items():
        systems[name] = {m: float(v.mean()) for m, v in values.items()}
        systems[name]["coverage"] = lists.shown[name].coverage()
        systems[name]["novelty"] = lists.shown[name].novelty()
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
    return {"task": task, "users": len(user_ids), "cold_users": int(cold.sum()),
            "relevant_items": relevant_items, "catalogue": stage.num_items,
            "settings": {"k": config.k, "recall_at": config.recall_at, "trials": config.trials,
                         "resamples": config.resamples, "confidence": config.confidence,
                         "cold_history": config.cold_history, "full_ranking": True},
            "systems": systems, "cold_systems": cold_systems, "intervals_vs_grec": intervals,
            "details": lists.details, "per_user": {name: {m: v.tolist() for m, v in values.items()}
                                                  for name, values in metrics.items()},
            "user_ids": list(user_ids)}


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
