"""A model version's recommendation stage: its candidate sources and the blend each task ranks by.

Sources, each scoring the whole catalogue for a user (exact: no approximate index, and the user's seen
items are removed before any top-n is taken, so nothing is over-fetched):
- `covisitation`: what users took up next to the user's latest items (grec.covisitation);
- `next_item`: grec's causal transformer over the user's history (grec.next_item);
- `popularity`: interactions per item in the `popularity_window_days` before the moment asked about.
Each source's best `candidates_per_source` unseen items are merged; every candidate then gets every
source's term, the ranker adds task terms where a blend uses them, and the task's blend orders them.

Items are rows 1..N of the stage's catalogue (`item_ids`); a user's history is given as raw item ids
(oldest first) with their times, as the online store and the training set hold them.

Files (a directory; no pickle): stage.json (catalogue, settings, blends, metadata), covisitation.npz,
popularity.npz, next_item.safetensors + next_item.json.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grec.covisitation import Covisitation, CovisitationConfig
from grec.next_item import NextItemModel, load_next_item, save_next_item, stack_histories
from recommend.popularity import ItemPopularity

STAGE_FILE = "stage.json"
STAGE_FORMAT = "grec.recommendation_stage"
STAGE_VERSION = 1
COVISITATION, NEXT_ITEM, POPULARITY = "covisitation", "next_item", "popularity"
SOURCES = (COVISITATION, NEXT_ITEM, POPULARITY)


@dataclass(frozen=True)
class UserHistory:
    """What the stage reads about a user: raw item ids taken up (oldest first), their times in
    seconds, the items to leave out (the seen set; empty allows repeats) and the moment asked about."""

    items: Sequence[Any]
    times: Sequence[float]
    exclude: Any  # iterable of raw item ids (a set, feature_store.online.SeenItems)
    now: float


@dataclass(frozen=True)
class CandidateSet:
    """Candidates of a block of users: item rows [users, C] (0 in empty slots), which slots hold an
    item, and each source's term [users, C]."""

    rows: np.ndarray
    valid: np.ndarray
    terms: dict[str, np.ndarray]


class RecommendationStage:
    def __init__(self, item_ids: Sequence[Any], popularity: ItemPopularity, *, covisitation: Covisitation | None,
                 next_item: NextItemModel | None, popularity_window_days: float | None, candidates_per_source: int,
                 blends: Mapping[str, Mapping[str, float]], metadata: Mapping[str, Any] | None = None) -> None:
        self.item_ids = list(item_ids)
        self.row_of = {item: row + 1 for row, item in enumerate(self.item_ids)}
        self.popularity = popularity
        self.covisitation = covisitation
        self.next_item = next_item
        self.popularity_window_days = popularity_window_days
        self.candidates_per_source = candidates_per_source
        self.blends = {task: dict(weights) for task, weights in blends.items()}
        self.metadata = dict(metadata or {})

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def sources(self) -> list[str]:
        present = {COVISITATION: self.covisitation is not None, NEXT_ITEM: self.next_item is not None,
                   POPULARITY: True}
        return [name for name in SOURCES if present[name]]

    # ---- scoring -----------------------------------------------------------------------------------
    def history_rows(self, users: Sequence[UserHistory]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each user's history as catalogue rows and times (items outside the catalogue dropped)."""
        out = []
        for user in users:
            rows = np.fromiter((self.row_of.get(item, 0) for item in user.items), dtype=np.int64, count=len(user.items))
            times = np.asarray(user.times, dtype=np.float64)
            known = rows > 0
            out.append((rows[known], times[known]))
        return out

    def source_scores(self, users: Sequence[UserHistory]) -> dict[str, np.ndarray]:
        """[users, N] scores of every catalogue item by each source (0 for a user without history
        from the history-based sources)."""
        histories = self.history_rows(users)
        has_history = np.array([len(rows) > 0 for rows, _ in histories])
        now = np.array([user.now for user in users], dtype=np.float64)
        scores = {POPULARITY: self.popularity.scores(now, self.popularity_window_days)}
        if self.covisitation is not None:
            scores[COVISITATION] = self.covisitation.scores([rows for rows, _ in histories])
        if self.next_item is not None:
            with torch.inference_mode():
                windows = stack_histories(histories, self.next_item.config.max_length)
                vectors = self.next_item.user_vectors(windows, torch.from_numpy(now))
                logits = self.next_item.scores(vectors).numpy()
            scores[NEXT_ITEM] = np.where(has_history[:, None], logits, 0.0).astype(np.float32)
        return scores

    def candidates(self, users: Sequence[UserHistory], per_source: int | None = None) -> CandidateSet:
        """Each source's best `per_source` (default the stage's) items not excluded for the user,
        merged, with every source's term for every candidate."""
        per_source = per_source or self.candidates_per_source
        scores = self.source_scores(users)
        excluded = np.zeros((len(users), self.num_items), dtype=bool)
        for index, user in enumerate(users):
            rows = [self.row_of[item] - 1 for item in user.exclude if item in self.row_of]
            excluded[index, rows] = True
        picked = []
        for name, values in scores.items():
            masked = np.where(excluded, -np.inf, values)
            take = min(per_source, self.num_items)
            top = np.argpartition(-masked, take - 1, axis=1)[:, :take] if take < self.num_items else \
                np.tile(np.arange(self.num_items), (len(users), 1))
            picked.append(np.where(np.take_along_axis(excluded, top, axis=1), -1, top))
        merged = [np.unique(row[row >= 0]) for row in np.concatenate(picked, axis=1)]
        width = max((len(m) for m in merged), default=0)
        columns = np.zeros((len(users), max(width, 1)), dtype=np.int64)
        valid = np.zeros_like(columns, dtype=bool)
        for index, row in enumerate(merged):
            columns[index, :len(row)] = row
            valid[index, :len(row)] = True
        terms = {name: np.where(valid, np.take_along_axis(values, columns, axis=1), 0.0)
                 for name, values in scores.items()}
        return CandidateSet(np.where(valid, columns + 1, 0), valid, terms)

    def terms_for(self, user: UserHistory, items: Sequence[Any]) -> dict[str, list[float]]:
        """Every source's term for given items of one user (a request's own candidates); an item
        outside the catalogue gets 0 from every source."""
        scores = self.source_scores([user])
        rows = [self.row_of.get(item, 0) for item in items]
        return {name: [float(values[0, row - 1]) if row else 0.0 for row in rows] for name, values in scores.items()}

    def items(self, rows: np.ndarray) -> list[Any]:
        return [self.item_ids[row - 1] for row in rows if row > 0]

    # ---- files -------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.popularity.save(directory)
        if self.covisitation is not None:
            self.covisitation.save(directory)
        if self.next_item is not None:
            save_next_item(self.next_item, directory)
        (directory / STAGE_FILE).write_text(json.dumps({
            "format": STAGE_FORMAT, "version": STAGE_VERSION, "item_ids": self.item_ids,
            "popularity_first_day": self.popularity.first_day, "popularity_window_days": self.popularity_window_days,
            "candidates_per_source": self.candidates_per_source,
            "covisitation": None if self.covisitation is None else self.covisitation.config.model_dump(),
            "next_item": self.next_item is not None, "blends": self.blends, "metadata": self.metadata,
        }, indent=1) + "\n")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> RecommendationStage:
        directory = Path(directory)
        meta = json.loads((directory / STAGE_FILE).read_text())
        if meta.get("format") != STAGE_FORMAT or meta.get("version") != STAGE_VERSION:
            raise ValueError(f"{directory / STAGE_FILE} is not a recommendation stage this grec reads "
                             f"(format {meta.get('format')!r} version {meta.get('version')!r}; expected "
                             f"{STAGE_FORMAT!r} version {STAGE_VERSION}); rebuild it with `grec build-index`")
        covisitation = None
        if meta["covisitation"] is not None:
            covisitation = Covisitation.load(directory, CovisitationConfig.model_validate(meta["covisitation"]))
        return cls(meta["item_ids"], ItemPopularity.load(directory, meta["popularity_first_day"]),
                   covisitation=covisitation, next_item=load_next_item(directory) if meta["next_item"] else None,
                   popularity_window_days=meta["popularity_window_days"],
                   candidates_per_source=meta["candidates_per_source"], blends=meta["blends"],
                   metadata=meta["metadata"])
