"""Fitting a recommendation stage on a prepared dataset (the work of `grec build-index`, see
jobs/retrieval/job.py for the steps): sources fitted on the training split and tuned on the
validation split, blends fitted there per binary task, then everything refitted on both splits.

Memory: the train and validation events are read batch by batch into compact arrays (about 20 bytes
an event, recommend.offline); once the judged validation users are built (only those), the fit keeps
each user's catalogue rows (int32) and times (float64) as runs of one array per split set (RunViews):
12 bytes per train or validation event, 12 more per training event (the fit before the refit has its
own), 32 bytes per user. Popularity is counted a chunk of events at a time, co-visitation one row
block at a time (grec.covisitation), the next-item model's windows are cut per batch; full-catalogue
scores, candidates and ranker rows exist for a block of users at a time.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from grec.covisitation import build_covisitation, build_covisitations
from grec.next_item import train_next_item
from recommend.blend import fit_blend
from recommend.heap import release_freed_heap
from recommend.metrics import ndcg
from recommend.offline import Interactions, RunViews, SplitUsers, read_interactions, split_runs, split_users
from recommend.popularity import ItemPopularity
from recommend.recommender import TaskScorer, add_task_terms
from recommend.ranker import Ranker
from recommend.rows import ItemRows, candidate_rows, latest_item_rows, row_task_scorer
from recommend.stage import SOURCES, CandidateSet, RecommendationStage

logger = logging.getLogger(__name__)
# The target that tunes the sources: every validation event is relevant.
INTERACTIONS = "_interactions"
ITEM_TOKEN = "item"
ENCODE_BATCH = 512
# Validation users whose full-catalogue scores and candidates are held at once, and users whose
# candidates go through the ranker in one forward: memory grows with these, not with the users.
BLOCK_USERS = 1024
RANKER_BATCH_USERS = 64


def targets_of(definition: Any) -> dict[str, str | None]:
    """Each binary task of the dataset (feature_store.definitions) and its relevant events' label:
    its positives, or every event (None) for implicit feedback."""
    return {t.name: (None if t.implicit else t.label) for t in definition.tasks if str(t.kind) == "binary"}


def full_ndcg(scores: np.ndarray, users: SplitUsers, stage_rows: dict[Any, int], target: str, k: int) -> float:
    """NDCG@k of full-catalogue scores [users, N] (each user's history left out) for `target`."""
    values, counts = user_ndcg(scores, users, stage_rows, target, k)
    return float(values[counts > 0].mean())


def user_ndcg(scores: np.ndarray, users: SplitUsers, stage_rows: dict[Any, int], target: str, k: int,
              offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(NDCG@k, |truth|) of each of the users offset.. whose full-catalogue scores are `scores`
    [block, N], each user's history left out (row by row: blocks give the values of the whole)."""
    masked = scores.astype(np.float64)  # a copy: the histories are masked in it
    relevant = np.zeros(masked.shape, dtype=bool)
    counts = np.zeros(len(scores), dtype=np.int64)
    for index in range(len(scores)):
        history, truth = users.histories[offset + index], users.truth[target][offset + index]
        masked[index, [stage_rows[i] - 1 for i in history.exclude if i in stage_rows]] = -np.inf
        relevant[index, [stage_rows[i] - 1 for i in truth if i in stage_rows]] = True
        counts[index] = len(truth)
    np.negative(masked, out=masked)  # best first, negated in place: no second [block, N] array
    top = np.argsort(masked, axis=1, kind="stable")[:, :k]
    return ndcg(np.take_along_axis(relevant, top, axis=1), counts, k), counts


class StageFitter:
    def __init__(self, loaded: Any, prepared: Any, config: Any) -> None:
        self.loaded, self.prepared, self.config = loaded, prepared, config
        self.ranker = Ranker(loaded.model, loaded.transforms, loaded.spec)
        self._catalogue_rows: pa.Table | None = None
        self.targets = {INTERACTIONS: None, **targets_of(loaded.definition)}
        self.seconds: dict[str, float] = {}

    def run(self) -> tuple[RecommendationStage, dict[str, Any]]:
        config = self.config
        mark = time.perf_counter()
        # Only the columns and splits the fit reads, batch by batch, into compact arrays (recommend.offline).
        interactions = read_interactions(self.prepared, sorted({c for c in self.targets.values() if c}),
                                         ("train", "validation"))
        item_ids, row_of_code = _catalogue(interactions)
        rows_of = {item: row + 1 for row, item in enumerate(item_ids)}
        positions = _sample_positions(len(split_runs(interactions, "validation")[0]), config.max_validation_users,
                                      config.seed)
        validation = split_users(self.prepared, "validation", self.targets, interactions, positions)
        # What the fits read of the events from here on: each user's catalogue rows and times, of the
        # training split (fit) and of both (refit); the codes, splits and labels are dropped.
        fit_sequences, fit_times = _sequences(interactions.within(("train",)), row_of_code)
        all_sequences, all_times = _sequences(interactions, row_of_code)
        del interactions
        features = self._item_features(item_ids) if config.next_item is not None and config.item_features else None
        release_freed_heap()  # each phase's freed pages go back before the next phase's large arrays
        self.seconds["read"] = time.perf_counter() - mark

        stage = RecommendationStage(item_ids, ItemPopularity.from_events(fit_sequences.values, fit_times.values,
                                                                         len(item_ids)),
                                    covisitation=None, next_item=None, popularity_window_days=None,
                                    candidates_per_source=config.candidates_per_source, blends={})
        judge = _Judge(stage, validation, rows_of, config.k)
        report: dict[str, Any] = {"items": len(item_ids), "validation_users": len(validation.user_ids)}

        mark = time.perf_counter()
        window, report["popularity"] = judge.best_window(config.popularity_windows)
        stage.popularity_window_days = window
        if config.covisitation:
            stage.covisitation, report["covisitation"] = _best_covisitation(fit_sequences, len(item_ids),
                                                                            config.covisitation_grid, judge)
        release_freed_heap()
        self.seconds["covisitation_and_popularity"] = time.perf_counter() - mark

        epochs = 0
        if config.next_item is not None:
            mark = time.perf_counter()
            stage.next_item, epochs, report["next_item"] = self._fit_next_item(
                fit_sequences, fit_times, len(item_ids), features, judge)
            release_freed_heap()
            self.seconds["next_item"] = time.perf_counter() - mark

        mark = time.perf_counter()
        stage.blends, report["blends"] = self._fit_blends(stage, validation, item_ids)
        release_freed_heap()
        self.seconds["blends"] = time.perf_counter() - mark

        mark = time.perf_counter()
        del fit_sequences, fit_times
        final = RecommendationStage(
            item_ids, ItemPopularity.from_events(all_sequences.values, all_times.values, len(item_ids)),
            covisitation=(build_covisitation(all_sequences, len(item_ids), stage.covisitation.config)
                          if stage.covisitation is not None else None),
            next_item=None, popularity_window_days=window, candidates_per_source=config.candidates_per_source,
            blends=stage.blends, metadata={"splits": ["train", "validation"], "validation": report,
                                           "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")})
        if config.next_item is not None:
            final.next_item, _ = train_next_item(all_sequences, all_times, len(item_ids), config.next_item, features,
                                                 epochs=epochs)
        self.seconds["refit"] = time.perf_counter() - mark
        report["seconds"] = {k: round(v, 2) for k, v in self.seconds.items()}
        return final, report

    @property
    def catalogue_rows(self) -> pa.Table:
        """Every catalogue item's latest training or validation row (its features), read batch by batch."""
        if self._catalogue_rows is None:
            batches = (batch for split in ("train", "validation") for batch in self.prepared.iter_split(split))
            self._catalogue_rows = latest_item_rows(batches, self.loaded.definition)
        return self._catalogue_rows

    # ---- parts -------------------------------------------------------------------------------------
    def _item_features(self, item_ids: list[Any]) -> torch.Tensor | None:
        """[N + 1, d_model]: the frozen ranker's item token of every catalogue item (row 0 zeros)."""
        model = self.loaded.model
        names = model.encoder.token_names
        if ITEM_TOKEN not in names:
            return None
        rows = ItemRows(self.catalogue_rows, self.loaded.definition)
        # The ranker reads a full raw row: any user's columns do (the item token ignores them).
        template = self.catalogue_rows.slice(0, 1)
        tokens = []
        with torch.inference_mode():
            for start in range(0, len(item_ids), ENCODE_BATCH):
                raw = candidate_rows(template, item_ids[start:start + ENCODE_BATCH], rows)
                batch = model.collate(self.loaded.transforms.transform(raw))
                tokens.append(model.encode_examples(batch)[:, names.index(ITEM_TOKEN)].float())
        out = torch.cat(tokens)
        return torch.cat([torch.zeros(1, out.shape[1]), out])

    def _fit_next_item(self, sequences: Sequence[np.ndarray], times: Sequence[np.ndarray], num_items: int,
                       features: torch.Tensor | None, judge: _Judge) -> tuple[Any, int, dict[str, Any]]:
        config = self.config
        history: list[tuple[int, float]] = []
        best: dict[str, Any] = {"ndcg": -1.0, "epoch": 0, "state": None}

        def on_epoch(epoch: int, model: Any) -> bool:
            if epoch % config.eval_every and epoch != config.next_item.max_epochs:
                return False
            score = judge.next_item_ndcg(model)
            history.append((epoch, round(score, 5)))
            logger.info("next-item model: epoch %d, validation NDCG@%d %.4f", epoch, config.k, score)
            if score > best["ndcg"]:
                best.update(ndcg=score, epoch=epoch, state={k: v.clone() for k, v in model.state_dict().items()})
            checks_since = (epoch - best["epoch"]) // config.eval_every
            return checks_since >= config.patience

        model, losses = train_next_item(sequences, times, num_items, config.next_item, features, on_epoch=on_epoch)
        model.load_state_dict(best["state"])
        return model.eval(), best["epoch"], {"ndcg": best["ndcg"], "epochs": best["epoch"], "checks": history,
                                             "final_loss": losses[-1]}

    def _fit_blends(self, stage: RecommendationStage, validation: SplitUsers,
                    item_ids: list[Any]) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
        ranker_tasks = [t.name for t in self.ranker.tasks if t.kind in ("binary", "regression")] \
            if self.config.ranker_terms else []
        item_rows = ItemRows(self.catalogue_rows, self.loaded.definition) if ranker_tasks else None
        blocks = []
        for start in range(0, len(validation.user_ids), BLOCK_USERS):
            block = stage.candidates(validation.histories[start:start + BLOCK_USERS])
            if ranker_tasks:
                scorer = row_task_scorer(lambda task, rows: self.ranker.score(task, rows).scores,
                                         self.ranker.binary_tasks, validation.rows, item_rows, offset=start)
                add_task_terms(block, stage, ranker_tasks, _in_batches(scorer, RANKER_BATCH_USERS))
            blocks.append(block)
        candidates = _concatenate(blocks) if blocks else stage.candidates(validation.histories)
        del blocks
        blends, report = {}, {}
        for task in self.targets:
            if task == INTERACTIONS:
                continue
            relevant = np.zeros(candidates.rows.shape, dtype=bool)
            counts = np.array([len(t) for t in validation.truth[task]], dtype=np.int64)
            for user, truth in enumerate(validation.truth[task]):
                relevant[user] = [stage.item_ids[r - 1] in truth if r else False for r in candidates.rows[user]]
            keep = counts > 0
            terms = {name: values[keep] for name, values in candidates.terms.items()}
            start = {name: (1.0 if name in SOURCES else 0.0) for name in terms}
            weights, score = fit_blend(terms, candidates.valid[keep], relevant[keep], counts[keep], self.config.k,
                                       start)
            blends[task] = {name: weight for name, weight in weights.items() if weight}
            report[task] = {"ndcg": score, "weights": blends[task], "users": int(keep.sum())}
        return blends, report


class _Judge:
    """Scores sources on the validation users: NDCG@k of every validation event, histories left out.
    Full-catalogue scores exist for BLOCK_USERS users at a time."""

    def __init__(self, stage: RecommendationStage, users: SplitUsers, rows_of: dict[Any, int], k: int) -> None:
        self.stage, self.users, self.rows_of, self.k = stage, users, rows_of, k
        self.history_rows = [rows for rows, _ in stage.history_rows(users.histories)]
        self.history_times = [times for _, times in stage.history_rows(users.histories)]
        self.now = np.array([h.now for h in users.histories])

    def source_ndcg(self, scores_of: Callable[[int, int], np.ndarray]) -> float:
        """NDCG@k of the scores `scores_of(start, end)` gives users start..end-1 ([users, N])."""
        values, counts = [], []
        for start in range(0, len(self.now), BLOCK_USERS):
            end = min(start + BLOCK_USERS, len(self.now))
            block_values, block_counts = user_ndcg(scores_of(start, end), self.users, self.rows_of, INTERACTIONS,
                                                   self.k, start)
            values.append(block_values)
            counts.append(block_counts)
        values, counts = np.concatenate(values), np.concatenate(counts)
        return float(values[counts > 0].mean())

    def best_window(self, windows: tuple[float | None, ...]) -> tuple[float | None, dict[str, Any]]:
        scores = {w: self.source_ndcg(lambda a, b, w=w: self.stage.popularity.scores(self.now[a:b], w))
                  for w in windows}
        best = max(windows, key=lambda w: (scores[w], w is None, w or 0))
        return best, {"window_days": best, "ndcg": scores[best],
                      "tried": {("all" if w is None else str(w)): round(s, 5) for w, s in scores.items()}}

    def covisitation_ndcg(self, covisitation: Any) -> float:
        return self.source_ndcg(lambda a, b: covisitation.scores(self.history_rows[a:b]))

    def next_item_ndcg(self, model: Any) -> float:
        from grec.next_item import stack_histories

        def scores(a: int, b: int) -> np.ndarray:
            with torch.inference_mode():
                windows = stack_histories(list(zip(self.history_rows[a:b], self.history_times[a:b], strict=True)),
                                          model.config.max_length)
                return model.scores(model.user_vectors(windows, torch.from_numpy(self.now[a:b]))).numpy()

        return self.source_ndcg(scores)


def _in_batches(scorer: TaskScorer, users_per_batch: int) -> TaskScorer:
    """`scorer` called on `users_per_batch` users at a time (the ranker's rows of a batch at once)."""

    def scored(users: Sequence[int], candidates: Sequence[Sequence[Any]], tasks: Sequence[str]):
        out: dict[str, list[np.ndarray]] = {task: [] for task in tasks}
        for start in range(0, len(users), users_per_batch):
            part = scorer(users[start:start + users_per_batch], candidates[start:start + users_per_batch], tasks)
            for task in tasks:
                out[task].extend(part[task])
        return out

    return scored


def _concatenate(blocks: list[CandidateSet]) -> CandidateSet:
    """Blocks of users' candidates as one set, each padded with empty slots to the widest."""
    width = max(block.rows.shape[1] for block in blocks)

    def pad(values: np.ndarray, fill: Any) -> np.ndarray:
        return np.pad(values, ((0, 0), (0, width - values.shape[1])), constant_values=fill)

    return CandidateSet(np.concatenate([pad(b.rows, 0) for b in blocks]),
                        np.concatenate([pad(b.valid, False) for b in blocks]),
                        {name: np.concatenate([pad(b.terms[name], 0.0) for b in blocks]) for name in blocks[0].terms})


def _catalogue(interactions: Interactions) -> tuple[list[Any], np.ndarray]:
    """The items of the events, most interacted with first (ties by id, so the order is stable), and
    the catalogue row (1..N; 0 for none) of each of the interactions' item codes."""
    counts = np.bincount(interactions.item_codes, minlength=len(interactions.item_values))
    values = interactions.item_values
    order = sorted(np.flatnonzero(counts).tolist(), key=lambda c: (-counts[c], str(values[c])))
    row_of_code = np.zeros(len(values), dtype=np.int32)
    row_of_code[np.asarray(order, dtype=np.int64)] = np.arange(1, len(order) + 1)
    return [values[c].item() if hasattr(values[c], "item") else values[c] for c in order], row_of_code


def _sequences(interactions: Interactions, row_of_code: np.ndarray) -> tuple[RunViews, RunViews]:
    """Each user's events as catalogue rows (int32) and times, oldest first: runs of one array each
    (an event costs 4 bytes of rows and 8 of times, shared with the interactions; a user 16 bytes of
    bounds, shared by the two)."""
    starts, ends = interactions.run_bounds()
    return RunViews(row_of_code[interactions.item_codes], starts, ends), RunViews(interactions.times, starts, ends)


def _best_covisitation(sequences: Sequence[np.ndarray], num_items: int, grid: tuple[Any, ...],
                       judge: _Judge) -> tuple[Any, dict[str, Any]]:
    """The grid's setting with the best validation NDCG (the first of equals in grid order). Pair
    counts depend only on the window and the backward weight: the settings that share them are built
    from one count (grec.covisitation.build_covisitations, block by block)."""
    best: tuple[float, int, Any] | None = None
    for key in dict.fromkeys((c.window, c.backward_weight) for c in grid):
        indices = [i for i, c in enumerate(grid) if (c.window, c.backward_weight) == key]
        built = build_covisitations(sequences, num_items, [grid[i] for i in indices])
        for index, covisitation in zip(indices, built, strict=True):
            score = judge.covisitation_ndcg(covisitation)
            if best is None or score > best[0] or (score == best[0] and index < best[1]):
                best = (score, index, covisitation)
        del built
        release_freed_heap()  # the window's settings and their judging, before the next window's counts
    return best[2], {"ndcg": best[0], "config": grid[best[1]].model_dump(), "tried": len(grid)}


def _sample_positions(users: int, limit: int | None, seed: int) -> list[int] | None:
    """A seeded sample of `limit` of `users` positions (ascending), None for all."""
    if limit is None or users <= limit:
        return None
    return sorted(np.random.default_rng(seed).choice(users, limit, replace=False).tolist())
