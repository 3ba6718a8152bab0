"""The Serve deployment behind the ingress: the `Scorer`, where each request's whole work runs.

One call per request. The ingress validates a request and hands it to one Scorer replica
(`recommend` or `score`), which does everything else in its own process: the online-store reads
(the user's row, seen set and latest events), the recommendation stage's candidates, the
candidates' rows, the forward per task and the blend, and returns the response. A request's rows
never cross a Ray call; only the request and its answer do. Before, the same work took one call to a
feature-lookup deployment for the user, one to the ranker for the candidates, one to the lookup for
the rows and one to the ranker per task, each shipping Arrow tables through the ingress, whose
(de)serialisation cost more CPU than the forward.

Why two deployments and not the Scorer as the FastAPI ingress itself: the ingress keeps what must
hold whatever a scoring replica does. Admission (`max_in_flight`, decided as a request arrives),
body and request deadlines and the token are answered by a process whose event loop no forward
holds, so a refused request gets its 503 at once and a replica that dies under a request turns
into grec's JSON 503 `unavailable` with Retry-After rather than whatever Serve's proxy answers; one
watcher of the alias (the ingress's) keeps pinning each request to one version as before. The hop
that remains carries only the request and its answer, not rows. Making the Scorer the ingress would
save that hop too, at the price of those properties; not done here.

The forward stays batched across concurrent requests: the request methods await `forward`, a
`@serve.batch` method of the same replica, so the rows of requests in flight together go through
each task's sub-model at once (serving.ranking.rank_batch).

The Scorer does not follow the registry alias: every call carries the model version the ingress
chose for the request as Serve's multiplexed model id (`handle.options(multiplexed_model_id=version)`),
and each replica keeps the versions it was asked for (`@serve.multiplexed`: the current one and the
one before, loaded on first use). So the dataset definition that builds a request's rows and the
model that scores them are the same version's, even while the alias moves; Serve routes calls for a
version to replicas that already hold it, and `@serve.batch` splits a batch by that id.

The work itself is the library's (serving/features.py, serving/retrieval.py, serving/ranking.py);
this module only wraps it. Client errors travel back as values (a returned `ServingError`) rather
than raised exceptions, so the replicas log no traceback for a bad request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from ray import serve

from feature_store.online import open_online_store
from feature_store.online.representations import RepresentationStore
from recommend.blend import blend_key
from recommend.rows import as_logit
from recommend.stage import SOURCES
from serving import metrics
from serving.config import ServingConfig
from serving.errors import ModelNotReadyError, RequestTimeoutError, ServingError
from serving.features import RequestRows, RowsQuery, StoreGuard, request_rows
from serving.model_source import load_servable, refusal_of, version_resolver
from serving.ranking import RankRequest, RankResult, rank_batch
from serving.retrieval import (Candidates, UserState, given_candidates, popular_items, read_seen_items,
                               read_user_state, stage_candidates)
from serving.schemas import ModelRef, RecommendRequest, RecommendResponse, RowScore, ScoredItem, ScoreRequest, \
    ScoreResponse
from serving.servable import ServableModel
from serving.warmup import warm_item_texts

log = logging.getLogger("ray.serve")
T = TypeVar("T")

# A replica keeps the version being served and the one before it (requests pinned to the old
# version finish on it while the alias moves).
VERSIONS_PER_REPLICA = 2
# Popular items ranked for a request without candidates when the version has no recommendation stage.
POPULAR_CANDIDATES = 200


def _expired(deadline: float) -> RequestTimeoutError | None:
    if time.time() > deadline:
        return RequestTimeoutError("the request's deadline passed before it could be worked on")
    return None


def _raise_error(result: RankResult) -> RankResult:
    if result.error is not None:
        raise result.error
    return result


@serve.deployment
class Scorer:
    """Answers /v1/recommend and /v1/score with the pinned model version: online features,
    candidates, rows and the batched forward in one process."""

    async def __init__(self, config: ServingConfig) -> None:
        self._config = config
        os.nice(config.scorer.nice)  # below the ingress and the proxy: they answer while forwards run
        self.forward.set_max_batch_size(config.batching.max_batch_size)
        self.forward.set_batch_wait_timeout_s(config.batching.batch_wait_timeout_s)
        # A missing or unreadable store fails the replica's start (and `serve.run`): never an empty store.
        self._guard = StoreGuard(open_online_store(config.online_store), config.on_store_unavailable,
                                 config.store_retry_interval_s)
        self._representations: dict[str, RepresentationStore] = {}  # per version: stored user sides
        # A replica starts with the version the registry names now, so one that replaces a dead
        # replica takes traffic only once it can score; unless that version is refused (the ingress
        # then keeps requests on the one before, which this replica loads on their first call).
        version = await asyncio.to_thread(version_resolver(config))
        try:
            await self.model(version)
        except Exception as err:
            refused = refusal_of(err)
            if refused is None:
                raise
            log.error("scorer: model version %s refused (%s); starting without it: %s", version, refused.reason,
                      refused)

    @serve.multiplexed(max_num_models_per_replica=VERSIONS_PER_REPLICA)
    async def model(self, version: str) -> ServableModel:
        log.info("scorer: loading model version %s", version)
        servable = await asyncio.to_thread(load_servable, self._config, version)
        # Before the version takes traffic (a replica's start, or the ingress warming a new version).
        await asyncio.to_thread(warm_item_texts, servable, self._guard, self._config.warm_item_texts)
        return servable

    async def _pinned_model(self) -> ServableModel:
        return await self.model(serve.get_multiplexed_model_id())

    async def _servable(self) -> ServableModel:
        """The pinned version; ModelNotReadyError when it cannot be loaded (the registry or the
        artifact store failed)."""
        try:
            return await self._pinned_model()
        except Exception as err:  # noqa: BLE001
            log.error("scorer: model version %s could not be loaded: %s", serve.get_multiplexed_model_id(), err)
            raise ModelNotReadyError(f"model version {serve.get_multiplexed_model_id()} could not be loaded") from None

    async def _answered(self, deadline: float,
                        work: Callable[[ServableModel], Awaitable[T]]) -> T | ServingError:
        """`work` on the pinned version, unless the deadline has passed; a client or serving error
        comes back as a value (the replica logs no traceback for it)."""
        try:
            if expired := _expired(deadline):
                return expired
            return await work(await self._servable())
        except ServingError as err:
            return err

    @serve.batch
    async def forward(self, requests: list[RankRequest]) -> list[RankResult]:
        # Serve splits batches by multiplexed model id: one version for the whole batch.
        try:
            servable = await self._servable()
        except ModelNotReadyError as error:
            return [RankResult.failed(error)] * len(requests)
        results: list[RankResult | None] = [None] * len(requests)
        live = []
        for index, request in enumerate(requests):
            if expired := _expired(request.deadline):
                results[index] = RankResult.failed(expired)
            else:
                live.append(index)
        # The forward runs on the event loop on purpose: requests that arrive meanwhile pile up and
        # form the next batch. With the forward in asyncio.to_thread, batches averaged 1.05 requests
        # at concurrency 8 instead of 4.2 (GIL contention with the loop; docs/benchmarks/serving.md).
        for index, result in zip(live, rank_batch(servable, [requests[i] for i in live]), strict=True):
            results[index] = result
        if live:
            metrics.observe_batch(len(live))
            for index in live:
                metrics.observe_rows(requests[index].rows.num_rows)
        return results  # type: ignore[return-value]  # every slot is filled above

    async def _rank(self, route: str, task: str, rows: pa.Table, deadline: float,
                    user_tokens: np.ndarray | None = None) -> RankResult:
        result = _raise_error(await self.forward(RankRequest(task, rows, deadline, user_tokens)))
        metrics.count_task(route, task)
        return result

    async def _rank_tasks(self, tasks: list[str], found: RequestRows, deadline: float) -> dict[str, RankResult]:
        tasks = list(dict.fromkeys(tasks))
        results = await asyncio.gather(*(self._rank("recommend", task, found.rows, deadline, found.user_tokens)
                                         for task in tasks))
        return dict(zip(tasks, results, strict=True))

    # ---- /v1/recommend ------------------------------------------------------------------------------
    async def recommend(self, body: RecommendRequest, blend: dict[str, float] | None, request_id: str,
                        deadline: float) -> RecommendResponse | ServingError:
        """The whole of one /v1/recommend request (checked by the ingress): its user, candidates,
        rows, scores and blend. `blend`: the request's or the config's, None for the fitted one."""
        return await self._answered(deadline, lambda servable: self._recommend(servable, body, blend, request_id,
                                                                               deadline))

    def _candidates(self, servable: ServableModel, body: RecommendRequest,
                    given: list[Any] | None) -> tuple[Candidates, bool, bool]:
        """(candidates, features degraded, cold start) of a request: the request's own (`given`), minus
        the seen set unless repeats are allowed and with the stage's terms when it has sources; else
        from the catalog: the version's recommendation stage (each source's best `retrieval_size`,
        default the stage's), or the most popular items (at least k) for a version without one."""
        definition, stage = servable.definition, servable.stage
        if given is not None and not (stage is not None and stage.sources):
            if not body.exclude_seen:
                return Candidates(given, "request"), False, False
            seen, degraded = read_seen_items(self._guard, definition, body.user_id)
            return Candidates(seen.without(given), "request"), degraded, False
        # the user's seen set and latest events: the stage's candidates, or its terms of the given ones
        state: UserState = read_user_state(self._guard, definition, body.user_id, body.context)
        if given is not None:
            picked = given_candidates(stage, state, given, body.exclude_seen)
        elif stage is None:
            n = max(self._config.retrieval_size or POPULAR_CANDIDATES, body.k, 1)
            picked = Candidates(popular_items(servable.popular, n, state.seen if body.exclude_seen else None),
                                "popularity")
        else:
            picked = stage_candidates(stage, state, body.exclude_seen, self._config.retrieval_size)
        return picked, state.degraded, state.cold_start

    def _rows(self, servable: ServableModel, body: RecommendRequest, items: list[Any]) -> RequestRows:
        """The rows of `items` for the request's user, with the user's stored representation when fresh."""
        found = request_rows(self._guard, servable.definition, RowsQuery(body.user_id, items, body.context),
                             self._stored_users(servable.version))
        metrics.count_cold_start(int(found.cold_start and not found.degraded))
        return found

    def _candidates_and_rows(self, servable: ServableModel, body: RecommendRequest, given: list[Any] | None,
                             want_rows: bool) -> tuple[Candidates, bool, bool, RequestRows | None]:
        picked, degraded, cold = self._candidates(servable, body, given)
        found = self._rows(servable, body, picked.items) if want_rows and picked.items else None
        return picked, degraded, cold, found

    async def _recommend(self, servable: ServableModel, body: RecommendRequest, blend: dict[str, float] | None,
                         request_id: str, deadline: float) -> RecommendResponse:
        given = None if body.candidates is None else list(dict.fromkeys(body.candidates))  # a repeat ranks once
        # The request's blend, the config's, the one fitted for the task, or the task's score alone;
        # the stage's sources weigh candidates the stage has terms for. Whether the forward is needed
        # is known before the candidates (their terms only decide which sources count).
        ranked_before = [name for name in (blend or {}) if name not in SOURCES]
        fitted = servable.stage.blends.get(body.task) if servable.stage is not None else None
        wants_scores = bool(ranked_before or not blend and [n for n in (fitted or {body.task: 1.0}) if n not in SOURCES])
        # The store reads and the stage run off the event loop, which forms the forward's batches.
        picked, degraded, cold, found = await asyncio.to_thread(self._candidates_and_rows, servable, body, given,
                                                                wants_scores)
        candidates = picked.items
        weights = dict(blend or (fitted if picked.terms is not None else None) or {body.task: 1.0})
        weights = {name: w for name, w in weights.items() if w and (name not in SOURCES or picked.terms is not None)}
        ranked_tasks = [name for name in weights if name not in SOURCES]
        shown_task = body.task if body.task in servable.task_names else None
        terms: dict[str, np.ndarray] = {name: np.asarray(values, dtype=np.float64)[None, :]
                                        for name, values in (picked.terms or {}).items()}
        valid = np.ones((1, len(candidates)), dtype=bool)
        scored: dict[str, RankResult] = {}
        if candidates and ranked_tasks:  # the blend needs the model's scores of every candidate
            if found is None:
                found = await asyncio.to_thread(self._rows, servable, body, candidates)
            scored = await self._rank_tasks([*ranked_tasks, *([shown_task] if shown_task else [])], found, deadline)
            binary = {t.name for t in servable.ranker.tasks if t.kind == "binary"}
            for task in ranked_tasks:
                values = np.asarray(scored[task].scores, dtype=np.float64)
                terms[task] = (as_logit(values) if task in binary else values)[None, :]
        else:
            found = None
        key = blend_key(terms, weights, valid)[0] if candidates else np.zeros(0)
        order = sorted(range(len(candidates)), key=lambda i: -key[i])[: body.k]
        if candidates and shown_task and shown_task not in scored:  # the shown score of the k items only
            candidates = [candidates[i] for i in order]
            terms = {name: values[:, order] for name, values in terms.items()}
            key, order = key[order], list(range(len(order)))
            found = await asyncio.to_thread(self._rows, servable, body, candidates)
            scored.update(await self._rank_tasks([shown_task], found, deadline))
        main = scored.get(shown_task) if shown_task else None
        model = main.model if main else {"name": servable.name, "version": servable.version, "alias": servable.alias}
        blended = weights != {body.task: 1.0}
        return RecommendResponse(
            request_id=request_id, model=ModelRef(**model), task=body.task, user_id=body.user_id,
            cold_start=found.cold_start if found else cold,
            features_degraded=degraded or bool(found and found.degraded),
            candidates_from=picked.source, user_encoding=found.user_encoding if found else "online",
            blend=weights if blended else None,
            items=[ScoredItem(item_id=candidates[i], score=main.scores[i] if main else float(key[i]),
                              known_item=main.known_items[i] if main else True,
                              rank_score=float(key[i]) if blended else None,
                              source_scores={n: float(terms[n][0, i]) for n in picked.terms} if picked.terms else None,
                              task_scores={t: r.scores[i] for t, r in scored.items()} if blended and scored else None)
                   for i in order],
        )

    # ---- /v1/score ----------------------------------------------------------------------------------
    async def score(self, body: ScoreRequest, groups: list[list[int]], request_id: str,
                    deadline: float) -> ScoreResponse | ServingError:
        """The whole of one /v1/score request (checked by the ingress): `groups` are the indices of
        its rows per distinct (user, context), one lookup each; one forward per task."""
        return await self._answered(deadline, lambda servable: self._score(servable, body, groups, request_id,
                                                                           deadline))

    async def _score(self, servable: ServableModel, body: ScoreRequest, groups: list[list[int]], request_id: str,
                     deadline: float) -> ScoreResponse:
        rows = body.rows
        queries = [RowsQuery(rows[ix[0]].user_id, [rows[i].item_id for i in ix], rows[ix[0]].context) for ix in groups]

        def lookup() -> list[RequestRows]:
            return [request_rows(self._guard, servable.definition, query) for query in queries]

        found = await asyncio.to_thread(lookup)
        metrics.count_cold_start(sum(1 for f in found if f.cold_start and not f.degraded))
        # Where each row is: (group, position in the group's table); then the rows of each task.
        place = {index: (g, j) for g, ix in enumerate(groups) for j, index in enumerate(ix)}
        by_task: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            by_task.setdefault(row.task, []).append(index)

        async def rank_task(task: str, indices: list[int]) -> tuple[list[int], RankResult]:
            tables = [found[place[i][0]].rows.slice(place[i][1], 1) for i in indices]
            return indices, await self._rank("score", task, pa.concat_tables(tables), deadline)

        scores: list[RowScore | None] = [None] * len(rows)
        model: dict[str, Any] = {}
        for indices, result in await asyncio.gather(*(rank_task(t, ix) for t, ix in by_task.items())):
            model = result.model
            for j, index in enumerate(indices):
                row, group = rows[index], found[place[index][0]]
                probabilities = result.class_probabilities[j] if result.class_probabilities else None
                scores[index] = RowScore(user_id=row.user_id, item_id=row.item_id, task=row.task,
                                         score=result.scores[j], class_probabilities=probabilities,
                                         cold_start=group.cold_start, known_item=result.known_items[j])
        return ScoreResponse(request_id=request_id, model=ModelRef(**model),
                             features_degraded=any(f.degraded for f in found), scores=scores)

    # ---- the ingress's other questions ---------------------------------------------------------------
    def _stored_users(self, version: str) -> RepresentationStore:
        """The version's stored user representations (its meta record is read once, then kept)."""
        if version not in self._representations:
            while len(self._representations) >= VERSIONS_PER_REPLICA:  # the oldest version goes first
                self._representations.pop(next(iter(self._representations)))
            self._representations[version] = RepresentationStore(self._guard.store, self._config.model_name, version)
        return self._representations[version]

    async def describe(self) -> dict[str, Any]:
        """The pinned version's description (loading it: the ingress's warm-up of a new version)."""
        return (await self._pinned_model()).describe()

    async def store_available(self) -> bool:
        """Whether the online store answers a read now (False also when it is being skipped)."""
        def probe() -> bool:
            try:
                return not self._guard.run(lambda store: store.read("_readiness", ["probe"]))[1]
            except ServingError:
                return False
        return await asyncio.to_thread(probe)

    def __del__(self) -> None:
        self._guard.store.close()
