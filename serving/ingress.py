"""The FastAPI ingress: versioned routes, validation, admission, and the calls to lookup and ranker.

The ingress is the one place that follows the registry alias (a `VersionWatcher`): it warms the new
version in the feature lookup and the ranker, then switches, and pins every request to the version
it started with (Serve's multiplexed model id on each call), so one request never mixes versions.
Each request gets a deadline that is passed to every deployment; each deployment is watched
(`DeploymentHealth`) so that a dead one gives fast 503s. Everything a request can get wrong is
checked here, before any lookup: task, limits, number of distinct users.

No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations, and
Serve's class-based views rewrite those functions, so the annotations must be real objects.
"""

import asyncio
import json
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving import metrics
from serving.config import ServingConfig
from serving.errors import (
    BadRequestError,
    FeaturesUnavailableError,
    OverloadedError,
    RequestTimeoutError,
    ServingError,
    TooManyCandidatesError,
    TooManyGroupsError,
    UnknownTaskError,
)
from serving.features import RequestRows, RowsQuery
from serving.health import DeploymentHealth, ServeReplicas
from serving.http import RequestEnvelope, install_error_handlers, request_id_of
from serving.model_source import refusal_of, version_resolver
from serving.openapi import openapi_document
from recommend.blend import blend_key
from recommend.rows import as_logit
from recommend.stage import SOURCES
from serving.ranking import RankRequest, RankResult
from serving.retrieval import Candidates, UserState
from serving.schemas import (
    ErrorResponse,
    HealthResponse,
    ModelRef,
    ModelResponse,
    RecommendRequest,
    RecommendResponse,
    RefusedVersionInfo,
    RowScore,
    ScoredItem,
    ScoreRequest,
    ScoreResponse,
    TaskInfo,
    TasksResponse,
)
from serving.watcher import RefusedVersion, VersionWatcher

T = TypeVar("T")

# How long warming a new version in the lookup and the ranker may take (a model load).
PREPARE_TIMEOUT_S = 600.0
# The deployments' watchers share one read of Serve's replica states this fresh (see ServeReplicas).
STATUS_MAX_AGE_S = 0.2

_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description, **({"headers": _RETRY_AFTER} if status == 503 else {})}
    for status, description in (
        (400, "malformed JSON"), (401, "missing or wrong bearer token"),
        (408, "the request body did not arrive within body_timeout_s"), (413, "payload too large"),
        (415, "the body is not application/json"),
        (422, "invalid request: wrong types, unknown task, too many candidates, rows or users, "
              "unknown context feature"),
        (503, "overloaded, a deployment not answering, or the online store unavailable (when configured to refuse)"),
        (504, "the request's deadline passed"),
    )
}

app = FastAPI(
    title="grec recommendation endpoint",
    version="1",
    description="Ranks items for a user and a task with the model the registry alias names. "
                "Routes under /v1 take `Authorization: Bearer <token>` when a token is configured.",
)
install_error_handlers(app)
app.add_middleware(RequestEnvelope)
_V1: dict[str, Any] = {"responses": _ERRORS}


@dataclass(frozen=True)
class ServedVersion:
    """A model version the lookup and ranker have loaded, with what the ingress checks against."""

    version: str
    info: dict[str, Any]  # the ranker's describe(): tasks, task specs, request value schemas
    lookup: DeploymentHandle  # handles pinned to this version
    ranker: DeploymentHandle

    @property
    def tasks(self) -> list[str]:
        return self.info["tasks"]

    @property
    def recommend_tasks(self) -> list[str]:
        return self.info.get("recommend_tasks", self.tasks)

    @property
    def sources(self) -> list[str]:
        return self.info["retrieval"].get("sources") or []

    def fitted_blend(self, task: str) -> dict[str, float] | None:
        return (self.info["retrieval"].get("blends") or {}).get(task)


def _refusal(error: Exception) -> tuple[str, str] | None:
    """(reason, message) when the lookup or the ranker refused a version's files; None otherwise."""
    refused = refusal_of(error)
    return None if refused is None else (refused.reason, str(refused))


@serve.deployment
@serve.ingress(app)
class Ingress:
    async def __init__(self, config: ServingConfig, lookup: DeploymentHandle, ranker: DeploymentHandle) -> None:
        self._config = config
        self._lookup = lookup
        self._ranker = ranker
        app.state.api_token = config.api_token.get_secret_value() if config.api_token else None
        app.state.max_body_bytes = config.max_body_bytes
        app.state.body_timeout_s = config.body_timeout_s
        app.state.retry_after_s = config.retry_after_s
        app.state.max_in_flight = config.max_in_flight
        app.state.in_flight = 0
        self._loop = asyncio.get_running_loop()
        self._served = await asyncio.to_thread(
            VersionWatcher, "ingress", version_resolver(config), self._prepare, config.reload_interval_s,
            follow=config.model_alias is not None, on_swap=self._on_swap, refusal=_refusal,
            on_refuse=lambda refused: metrics.count_refused_version(refused.version, refused.reason),
        )
        self._on_swap(self._served.current)
        # Down means Serve has no running replica (its own health checks decide), never "slow to
        # answer": a ranker busy with a long batch is alive (serving/health.py).
        replicas = ServeReplicas(ranker.app_name, max_age_s=STATUS_MAX_AGE_S)
        self._health = {
            name: DeploymentHealth(name, lambda deployment=handle.deployment_name: replicas.running(deployment),
                                   options.health_check_period_s, config.retry_after_s)
            for name, handle, options in (("feature lookup", lookup, config.features),
                                          ("ranker", ranker, config.ranker))
        }
        self._store_available = True  # the online store's state as the lookup last reported it
        for health in self._health.values():
            health.start()

    def _prepare(self, version: str) -> ServedVersion:
        """Loads `version` in the lookup and the ranker (blocking; runs on the watcher's thread). The
        calls run on the replica's event loop: Serve's handles belong to it (in Serve's
        throughput-optimized mode a handle cannot be used from another thread at all)."""
        return asyncio.run_coroutine_threadsafe(self._warm(version), self._loop).result()

    async def _warm(self, version: str) -> ServedVersion:
        lookup = self._lookup.options(multiplexed_model_id=version)
        ranker = self._ranker.options(multiplexed_model_id=version)
        await asyncio.wait_for(lookup.ping.remote(), PREPARE_TIMEOUT_S)
        info = await asyncio.wait_for(ranker.describe.remote(), PREPARE_TIMEOUT_S)
        return ServedVersion(version, info, lookup, ranker)

    def _on_swap(self, served: ServedVersion) -> None:
        # The OpenAPI document names this version's tasks and id types: rebuild it on next request.
        def document() -> dict[str, Any]:
            if app.openapi_schema is None:
                base = get_openapi(title=app.title, version=app.version, description=app.description,
                                   routes=app.routes)
                app.openapi_schema = openapi_document(base, self._config, served.tasks,
                                                      served.info["request_values"], served.recommend_tasks,
                                                      served.sources)
            return app.openapi_schema

        app.openapi_schema = None
        app.openapi = document

    # ---- /v1 ---------------------------------------------------------------------------------------
    @app.post("/v1/recommend", **_V1, response_model=RecommendResponse, summary="Top-k items for a user and a task")
    async def recommend(self, body: RecommendRequest, request: Request) -> RecommendResponse:
        served = self._served.current
        if body.task not in served.recommend_tasks:
            raise UnknownTaskError(body.task, served.recommend_tasks)
        blend = body.blend if body.blend is not None else self._config.blend.get(body.task)
        self._check_tasks(served, [t for t in blend or {} if t not in SOURCES])
        if body.k > self._config.max_k:
            raise BadRequestError(f"k is {body.k}; this endpoint returns at most {self._config.max_k} items")
        if body.candidates is not None:
            self._check_row_count(len(body.candidates), "candidates")
        return await self._within_deadline(lambda deadline: self._recommend(served, body, blend,
                                                                             request_id_of(request), deadline))

    async def _recommend(self, served: ServedVersion, body: RecommendRequest, blend: dict[str, float] | None,
                         request_id: str, deadline: float) -> RecommendResponse:
        degraded, cold = False, False
        given = None if body.candidates is None else list(dict.fromkeys(body.candidates))  # a repeat ranks once
        if given is None or served.sources:
            # the user's seen set and latest events: the stage's candidates, or its terms of the given ones
            state: UserState = self._raise_error(await self._call(
                "feature lookup", served.lookup.user_state.remote(body.user_id, body.context, deadline)))
            degraded, cold = state.degraded, state.cold_start
            picked: Candidates = await self._call(
                "ranker", served.ranker.candidates.remote(state, body.exclude_seen, self._config.retrieval_size,
                                                          max(body.k, 1), given))
        else:
            items = given
            if body.exclude_seen:
                seen, degraded = self._raise_error(await self._call(
                    "feature lookup", served.lookup.seen.remote(body.user_id, deadline)))
                items = seen.without(items)
            picked = Candidates(items, "request")
        candidates = picked.items
        # The request's blend, the config's, the one fitted for the task, or the task's score alone;
        # the stage's sources weigh candidates the stage has terms for.
        weights = dict(blend or (served.fitted_blend(body.task) if picked.terms is not None else None)
                       or {body.task: 1.0})
        weights = {name: w for name, w in weights.items() if w and (name not in SOURCES or picked.terms is not None)}
        ranked_tasks = [name for name in weights if name not in SOURCES]
        shown_task = body.task if body.task in served.tasks else None
        terms: dict[str, np.ndarray] = {name: np.asarray(values, dtype=np.float64)[None, :]
                                        for name, values in (picked.terms or {}).items()}
        valid = np.ones((1, len(candidates)), dtype=bool)
        scored: dict[str, RankResult] = {}
        found: RequestRows | None = None
        if candidates and ranked_tasks:  # the blend needs the ranker's scores of every candidate
            found = await self._rows(served, body, candidates, deadline)
            scored = await self._rank_tasks(served, [*ranked_tasks, *([shown_task] if shown_task else [])],
                                            found, deadline)
            binary = {t["name"] for t in served.info["task_specs"] if t["kind"] == "binary"}
            for task in ranked_tasks:
                values = np.asarray(scored[task].scores, dtype=np.float64)
                terms[task] = (as_logit(values) if task in binary else values)[None, :]
        key = blend_key(terms, weights, valid)[0] if candidates else np.zeros(0)
        order = sorted(range(len(candidates)), key=lambda i: -key[i])[: body.k]
        if candidates and shown_task and shown_task not in scored:  # the shown score of the k items only
            candidates = [candidates[i] for i in order]
            terms = {name: values[:, order] for name, values in terms.items()}
            key, order = key[order], list(range(len(order)))
            found = await self._rows(served, body, candidates, deadline)
            scored.update(await self._rank_tasks(served, [shown_task], found, deadline))
        main = scored.get(shown_task) if shown_task else None
        model = main.model if main else {"name": served.info["name"], "version": served.version,
                                         "alias": served.info["alias"]}
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

    async def _rows(self, served: ServedVersion, body: RecommendRequest, items: list[Any],
                    deadline: float) -> RequestRows:
        return self._raise_error(await self._call(
            "feature lookup", served.lookup.rows.remote([RowsQuery(body.user_id, items, body.context)], deadline,
                                                        stored_users=True)))[0]

    async def _rank_tasks(self, served: ServedVersion, tasks: list[str], found: RequestRows,
                          deadline: float) -> dict[str, RankResult]:
        tasks = list(dict.fromkeys(tasks))
        results = await asyncio.gather(*(self._rank(served, "recommend", task, found.rows, deadline,
                                                    found.user_tokens) for task in tasks))
        return dict(zip(tasks, results, strict=True))

    @app.post("/v1/score", **_V1, response_model=ScoreResponse, summary="Scores of explicit (user, item, task) rows")
    async def score(self, body: ScoreRequest, request: Request) -> ScoreResponse:
        served = self._served.current
        self._check_row_count(len(body.rows), "rows")
        self._check_tasks(served, [row.task for row in body.rows])
        # One lookup per distinct (user, context), all in one call; one ranker call per task.
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, row in enumerate(body.rows):
            key = (type(row.user_id).__name__, row.user_id, json.dumps(row.context, sort_keys=True))
            groups.setdefault(key, []).append(index)
        if len(groups) > self._config.max_score_groups:
            raise TooManyGroupsError(f"{len(groups)} distinct (user, context) pairs; this endpoint takes at most "
                                     f"{self._config.max_score_groups} per request")
        return await self._within_deadline(lambda deadline: self._score(served, body, list(groups.values()),
                                                                         request_id_of(request), deadline))

    async def _score(self, served: ServedVersion, body: ScoreRequest, groups: list[list[int]], request_id: str,
                     deadline: float) -> ScoreResponse:
        rows = body.rows
        queries = [RowsQuery(rows[ix[0]].user_id, [rows[i].item_id for i in ix], rows[ix[0]].context) for ix in groups]
        found: list[RequestRows] = self._raise_error(
            await self._call("feature lookup", served.lookup.rows.remote(queries, deadline)))
        # Where each row is: (group, position in the group's table); then the rows of each task.
        place = {index: (g, j) for g, ix in enumerate(groups) for j, index in enumerate(ix)}
        by_task: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            by_task.setdefault(row.task, []).append(index)

        async def rank_task(task: str, indices: list[int]) -> tuple[list[int], RankResult]:
            tables = [found[place[i][0]].rows.slice(place[i][1], 1) for i in indices]
            return indices, await self._rank(served, "score", task, pa.concat_tables(tables), deadline)

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

    @app.get("/v1/tasks", **_V1, response_model=TasksResponse, summary="Tasks the loaded model serves")
    async def tasks(self) -> TasksResponse:
        info = self._served.current.info
        return TasksResponse(model=ModelRef(name=info["name"], version=info["version"], alias=info["alias"]),
                             tasks=[TaskInfo(**task) for task in info["task_specs"]])

    @app.get("/v1/model", **_V1, response_model=ModelResponse, summary="The loaded model version")
    async def model(self) -> ModelResponse:
        info = self._served.current.info
        refused: RefusedVersion | None = self._served.refused
        return ModelResponse(**{k: v for k, v in info.items() if k not in ("task_specs", "request_values")},
                             refused=None if refused is None else RefusedVersionInfo(
                                 version=refused.version, reason=refused.reason, message=refused.message,
                                 at=refused.at.isoformat()))

    # ---- unversioned operations routes ---------------------------------------------------------------
    @app.api_route("/healthz", methods=["GET", "HEAD"], response_model=HealthResponse,
                   response_model_exclude_none=True, summary="Liveness: the ingress answers")
    async def healthz(self) -> HealthResponse:
        return HealthResponse(status="ok")

    @app.api_route("/readyz", methods=["GET", "HEAD"], response_model=HealthResponse,
                   responses={503: _ERRORS[503]},
                   summary="Readiness: the feature lookup and the ranker answer with the served version")
    async def readyz(self) -> HealthResponse:
        # Ready: Serve runs a replica of each deployment (its health checks, not a call that waits
        # behind a busy replica's work) and they have loaded the served version (before it was served).
        served = self._served.current
        for health in self._health.values():
            if not health.up:
                raise health.unavailable()
        store_ok = await self._online_store_available(served)
        if not store_ok and self._config.on_store_unavailable == "reject":
            raise FeaturesUnavailableError("the online store is not answering")
        return HealthResponse(status="ok", model_version=served.version, features_degraded=not store_ok)

    @app.get("/metrics", summary="Prometheus metrics of every replica (grec's and Serve's), summed over processes",
             response_class=Response)
    async def prometheus(self) -> Response:
        body, content_type = await metrics.exposition()
        return Response(content=body, media_type=content_type)

    # ---- helpers --------------------------------------------------------------------------------------
    async def _online_store_available(self, served: ServedVersion) -> bool:
        """Whether the online store answers, as the lookup finds it now or, when the lookup is too
        busy to tell within `readiness_timeout_s` (its queue full or its calls waiting), as it last found it."""
        try:
            self._store_available = await asyncio.wait_for(
                self._call("feature lookup", served.lookup.store_available.remote()), self._config.readiness_timeout_s)
        except (TimeoutError, OverloadedError):
            pass
        return self._store_available

    def _check_tasks(self, served: ServedVersion, tasks: list[str]) -> None:
        for task in dict.fromkeys(tasks):
            if task not in served.tasks:
                raise UnknownTaskError(task, served.tasks)

    def _check_row_count(self, count: int, what: str) -> None:
        if count == 0:
            raise BadRequestError(f"{what} is empty; " + (
                "omit it to retrieve candidates from the catalog" if what == "candidates" else "send at least one"))
        if count > self._config.max_candidates:
            raise TooManyCandidatesError(f"{count} {what}; this endpoint takes at most {self._config.max_candidates}")

    async def _within_deadline(self, work: Any) -> Any:
        """Runs `work(deadline)`; a 504 when the deadline passes first (its calls are cancelled)."""
        timeout = self._config.request_timeout_s
        try:
            return await asyncio.wait_for(work(time.time() + timeout), timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"the request took longer than {timeout} s and was abandoned") from None

    async def _call(self, deployment: str, response: Awaitable[T]) -> T:
        return await self._health[deployment].call(response)

    @staticmethod
    def _raise_error(answer: T | ServingError) -> T:
        if isinstance(answer, ServingError):
            raise answer
        return answer

    async def _rank(self, served: ServedVersion, route: str, task: str, rows: Any, deadline: float,
                    user_tokens: Any = None) -> RankResult:
        result: RankResult = await self._call("ranker", served.ranker.rank.remote(
            RankRequest(task, rows, deadline, user_tokens)))
        if result.error is not None:
            raise result.error
        metrics.count_task(route, task)
        return result
