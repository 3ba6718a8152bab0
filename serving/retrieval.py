"""Candidate retrieval for requests without candidates: the first stage of /v1/recommend.

The endpoint only loads and queries here; the two-tower head is grec.retrieval's and the index is
built per model version by `grec build-index` (jobs/retrieval). Sources, in order:
- `retrieval`: the user's two-tower vector (from the same raw row the ranker would build, so the
  online store's latest features and history) searched in the version's ANN index (faiss);
- `popularity`: the items seen most often in training (the item vocabulary's order), for users the
  store does not know (cold start), when the store is degraded, and for versions without an index.

Every source leaves out the user's seen set (feature_store/online/seen.py) unless the request
allows repeats; the index is asked for more neighbours to make up for the ones left out.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
import pyarrow as pa
import torch

from feature_store.definitions import DatasetDefinition
from feature_store.online import OnlineStore, SeenItems, build_request_rows, read_seen
from feature_store.transforms import TransformSet
from grec import InputSpec, MultiTaskModel
from grec.retrieval import TwoTower, example_inputs, load_two_tower
from registry.models import RegisteredModel
from registry.retrieval_index import ANN_FILE, fetch_retrieval_index, read_index_metadata
from serving.errors import BadRequestError
from serving.features import StoreGuard, check_context, check_entity_id

CandidateSource = Literal["retrieval", "popularity"]
# HNSW's search breadth: at least this, and at least the number of neighbours asked for.
MIN_EF_SEARCH = 128


@dataclass(frozen=True)
class Candidates:
    """Candidate item ids, the source that chose them, and their retrieval logits (from the index)."""

    items: list[Any]
    source: CandidateSource
    logits: list[float] | None = None


@dataclass(frozen=True)
class UserState:
    """What retrieval needs about the request's user: one raw row (the training set's schema, no
    candidate item), the seen set, and whether stored features were used."""

    rows: pa.Table
    seen: SeenItems
    cold_start: bool
    degraded: bool


def user_state(store: OnlineStore, definition: DatasetDefinition, user_id: Any, context: dict[str, Any] | None,
               now: dt.datetime | None = None) -> UserState:
    """The user's row (item columns null) and seen set in `store` as of `now` (default: the current
    time; offline evaluation replays a past moment)."""
    rows, missing = build_request_rows(store, definition, user_id, [None], context, now=now)
    return UserState(rows, read_seen(store, user_id), cold_start=bool(missing.user_views), degraded=False)


def read_user_state(guard: StoreGuard, definition: DatasetDefinition, user_id: Any,
                    context: dict[str, Any] | None) -> UserState:
    """`user_state` of a request's user, read through the guard (checked ids and context; default
    features and an empty seen set while the store is unavailable)."""
    user_id = check_entity_id(definition.user, user_id, "user_id")
    context = check_context(definition, context)
    try:
        state, degraded = guard.run(lambda store: user_state(store, definition, user_id, context))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:  # a context value of the wrong type
        raise BadRequestError(f"request features do not match the model's schema: {err}") from None
    return UserState(state.rows, state.seen, cold_start=state.cold_start or degraded, degraded=degraded)


def read_seen_items(guard: StoreGuard, definition: DatasetDefinition, user_id: Any) -> tuple[SeenItems, bool]:
    """The user's seen set and whether the store was unavailable (then it is empty)."""
    user_id = check_entity_id(definition.user, user_id, "user_id")
    return guard.run(lambda store: read_seen(store, user_id))


class ItemIndex:
    """A version's ANN index over item vectors, and the raw item id of each of its rows."""

    def __init__(self, index: faiss.Index, item_ids: list[Any], metadata: dict[str, Any]) -> None:
        self.index = index
        self.item_ids = item_ids
        self.metadata = metadata

    @classmethod
    def load(cls, directory: str | Path) -> ItemIndex:
        directory = Path(directory)
        metadata = read_index_metadata(directory)
        item_ids = metadata.pop("item_ids")
        return cls(faiss.read_index(str(directory / ANN_FILE)), item_ids, metadata)

    def search(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the `k` nearest items of each vector by inner product; rows are -1
        where the index holds fewer."""
        k = min(k, self.index.ntotal)
        params = None
        if isinstance(self.index, faiss.IndexHNSW):
            params = faiss.SearchParametersHNSW(efSearch=max(MIN_EF_SEARCH, k))
        return self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k, params=params)


class CandidateRetriever:
    """A model version's candidate sources: its two-tower and ANN index when it has them, and
    popularity (its item vocabulary, most frequent first)."""

    def __init__(self, model: MultiTaskModel, transforms: TransformSet, spec: InputSpec,
                 tower: TwoTower | None = None, index: ItemIndex | None = None) -> None:
        self.model = model
        self.transforms = transforms
        self.tower = tower
        self.index = index
        self._popular = transforms.vocabularies[spec.item_id].values

    @classmethod
    def load(cls, model: MultiTaskModel, transforms: TransformSet, spec: InputSpec,
             directory: str | Path | None) -> CandidateRetriever:
        """With the index files in `directory` (see registry.retrieval_index), or popularity only."""
        if directory is None:
            return cls(model, transforms, spec)
        faiss.omp_set_num_threads(1)  # one query at a time: threads would only contend
        return cls(model, transforms, spec, load_two_tower(directory), ItemIndex.load(directory))

    @property
    def has_index(self) -> bool:
        return self.index is not None

    def describe(self) -> dict[str, Any]:
        if self.index is None:
            return {"index": False}
        described = {k: self.index.metadata[k] for k in ("kind", "built_at", "positive_task") if k in self.index.metadata}
        return {"index": True, "items": self.index.index.ntotal, **described}

    def candidates(self, state: UserState, n: int, exclude_seen: bool = True) -> Candidates:
        """Up to `n` candidate ids for the user, the source that chose them and, from the index,
        their retrieval logits."""
        seen = state.seen if exclude_seen else SeenItems()
        if self.index is None or state.cold_start:
            return Candidates(self.popular(n, seen), "popularity")
        items, logits = self.retrieve(state.rows, n, seen)
        return Candidates(items, "retrieval", logits)

    def popular(self, n: int, seen: SeenItems | None = None) -> list[Any]:
        """The `n` items seen most often in training, minus `seen`."""
        seen = seen or SeenItems()
        out: list[Any] = []
        for item in self._popular:
            if item not in seen:
                out.append(item)
                if len(out) == n:
                    break
        return out

    def user_vectors(self, rows: pa.Table) -> np.ndarray:
        """[rows, dim] two-tower vectors of raw user rows (item columns ignored)."""
        if self.tower is None:
            raise ValueError("this model version has no retrieval index; build one with `grec build-index`")
        batch = self.model.collate(self.transforms.transform(rows))
        with torch.inference_mode():
            inputs = example_inputs(self.model, batch)
            return self.tower.user_embedding(inputs.user_tokens, inputs.history).numpy()

    def retrieve(self, rows: pa.Table, n: int, seen: SeenItems) -> tuple[list[Any], list[float]]:
        """The `n` nearest unseen items of the (first) row's user: (ids, logits), nearest first."""
        ids, scores = self.retrieve_many(rows.slice(0, 1), n, [seen])
        return ids[0], scores[0]

    def retrieve_many(self, rows: pa.Table, n: int, seen: list[SeenItems]) -> tuple[list[list[Any]], list[list[float]]]:
        """For each raw user row, its `n` nearest items minus its seen set, and their logits: the inner
        product over the two-tower's temperature, the log-probability of the item for the user up to
        a constant (the head is trained as a softmax over items)."""
        vectors = self.user_vectors(rows)
        asked = n + max((len(s) for s in seen), default=0)
        scores, positions = self.index.search(vectors, asked)
        ids, kept_scores = [], []
        for row_scores, row_positions, row_seen in zip(scores, positions, seen, strict=True):
            chosen, values = [], []
            for score, position in zip(row_scores, row_positions, strict=True):
                if position < 0:
                    break
                item = self.index.item_ids[position]
                if item not in row_seen:
                    chosen.append(item)
                    values.append(float(score) / self.tower.config.temperature)
                    if len(chosen) == n:
                        break
            ids.append(chosen)
            kept_scores.append(values)
        return ids, kept_scores


def load_version_retriever(loaded: RegisteredModel, require_integrity: bool | None = None) -> CandidateRetriever:
    """A registered version's retriever: with its retrieval index when it has one (its files checked
    against their manifest, see registry.retrieval_index), popularity only otherwise."""
    with tempfile.TemporaryDirectory() as tmp:
        directory = fetch_retrieval_index(loaded.name, str(loaded.version), tmp, require_integrity=require_integrity)
        return CandidateRetriever.load(loaded.model, loaded.transforms, loaded.spec, directory)
