"""The FastAPI ingress: versioned routes, validation, admission, and one call to the scorer per request.

The ingress is a thin HTTP layer: the token, body limits and deadlines, admission (`max_in_flight`),
validation, the OpenAPI document, /readyz and /metrics. Everything a request can get wrong is
checked here, before any lookup: task, limits, number of distinct users. Then the whole request
goes to one Scorer replica in one call (serving/deployments.py), which reads the store, picks the
candidates, builds the rows, ranks and answers.

The ingress is the one place that follows the registry alias (a `VersionWatcher`): it warms the new
version in the scorer, then switches, and pins every request to the version it started with (Serve's
multiplexed model id on the call), so one request never mixes versions. Each request gets a deadline
that the scorer honours; the scorer is watched (`DeploymentHealth`) so that a dead one gives fast 503s.

No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations, and
Serve's class-based views rewrite those functions, so the annotations must be real objects.
"""

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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
from serving.health import DeploymentHealth, ServeReplicas
from serving.http import RequestEnvelope, install_error_handlers, request_id_of
from serving.model_source import refusal_of, version_resolver
from serving.openapi import openapi_document
from recommend.stage import SOURCES
from serving.schemas import (
    ErrorResponse,
    HealthResponse,
    ModelRef,
    ModelResponse,
    RecommendRequest,
    RecommendResponse,
    RefusedVersionInfo,
    ScoreRequest,
    ScoreResponse,
    TaskInfo,
    TasksResponse,
)
from serving.watcher import RefusedVersion, VersionWatcher

# How long warming a new version in the scorer may take (a model load).
PREPARE_TIMEOUT_S = 600.0
# The scorer's watcher reads Serve's replica states at most this often (see ServeReplicas).
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
    """A model version the scorer has loaded, with what the ingress checks against."""

    version: str
    info: dict[str, Any]  # the scorer's describe(): tasks, task specs, request value schemas
    scorer: DeploymentHandle  # pinned to this version

    @property
    def tasks(self) -> list[str]:
        return self.info["tasks"]

    @property
    def recommend_tasks(self) -> list[str]:
        return self.info.get("recommend_tasks", self.tasks)

    @property
    def sources(self) -> list[str]:
        return self.info["retrieval"].get("sources") or []


def _refusal(error: Exception) -> tuple[str, str] | None:
    """(reason, message) when the scorer refused a version's files; None otherwise."""
    refused = refusal_of(error)
    return None if refused is None else (refused.reason, str(refused))


@serve.deployment
@serve.ingress(app)
class Ingress:
    async def __init__(self, config: ServingConfig, scorer: DeploymentHandle) -> None:
        os.nice(config.ingress.nice)
        self._config = config
        self._scorer = scorer
        app.state.api_token = config.api_token.get_secret_value() if config.api_token else None
        app.state.max_body_bytes = config.max_body_bytes
        app.state.body_timeout_s = config.body_timeout_s
        app.state.retry_after_s = config.retry_after_s
        app.state.max_in_flight = config.max_in_flight
        app.state.admission_body_grace_s = config.admission_body_grace_s
        app.state.in_flight = 0
        self._loop = asyncio.get_running_loop()
        self._served = await asyncio.to_thread(
            VersionWatcher, "ingress", version_resolver(config), self._prepare, config.reload_interval_s,
            follow=config.model_alias is not None, on_swap=self._on_swap, refusal=_refusal,
            on_refuse=lambda refused: metrics.count_refused_version(refused.version, refused.reason),
        )
        self._on_swap(self._served.current)
        # Down means Serve has no running replica (its own health checks decide), never "slow to
        # answer": a scorer busy with a long batch is alive (serving/health.py).
        replicas = ServeReplicas(scorer.app_name, max_age_s=STATUS_MAX_AGE_S)
        self._health = DeploymentHealth("scorer", lambda: replicas.running(scorer.deployment_name),
                                        config.scorer.health_check_period_s, config.retry_after_s)
        self._store_available = True  # the online store's state as the scorer last reported it
        self._health.start()

    def _prepare(self, version: str) -> ServedVersion:
        """Loads `version` in the scorer (blocking; runs on the watcher's thread). The call runs on
        the replica's event loop: Serve's handles belong to it (in Serve's throughput-optimized mode
        a handle cannot be used from another thread at all)."""
        return asyncio.run_coroutine_threadsafe(self._warm(version), self._loop).result()

    async def _warm(self, version: str) -> ServedVersion:
        scorer = self._scorer.options(multiplexed_model_id=version)
        info = await asyncio.wait_for(scorer.describe.remote(), PREPARE_TIMEOUT_S)
        return ServedVersion(version, info, scorer)

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
        request_id = request_id_of(request)
        return await self._within_deadline(
            lambda deadline: served.scorer.recommend.remote(body, blend, request_id, deadline))

    @app.post("/v1/score", **_V1, response_model=ScoreResponse, summary="Scores of explicit (user, item, task) rows")
    async def score(self, body: ScoreRequest, request: Request) -> ScoreResponse:
        served = self._served.current
        self._check_row_count(len(body.rows), "rows")
        self._check_tasks(served, [row.task for row in body.rows])
        # One lookup per distinct (user, context); one forward per task, in the scorer.
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, row in enumerate(body.rows):
            key = (type(row.user_id).__name__, row.user_id, json.dumps(row.context, sort_keys=True))
            groups.setdefault(key, []).append(index)
        if len(groups) > self._config.max_score_groups:
            raise TooManyGroupsError(f"{len(groups)} distinct (user, context) pairs; this endpoint takes at most "
                                     f"{self._config.max_score_groups} per request")
        request_id = request_id_of(request)
        return await self._within_deadline(
            lambda deadline: served.scorer.score.remote(body, list(groups.values()), request_id, deadline))

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
                   summary="Readiness: the scorer answers with the served version")
    async def readyz(self) -> HealthResponse:
        # Ready: Serve runs a replica of the scorer (its health checks, not a call that waits behind
        # a busy replica's work) and it has loaded the served version (before it was served).
        served = self._served.current
        if not self._health.up:
            raise self._health.unavailable()
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
        """Whether the online store answers, as the scorer finds it now or, when the scorer is too
        busy to tell within `readiness_timeout_s` (its queue full or its calls waiting), as it last found it."""
        try:
            self._store_available = await asyncio.wait_for(
                self._health.call(served.scorer.store_available.remote()), self._config.readiness_timeout_s)
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

    async def _within_deadline(self, call: Callable[[float], Awaitable[Any]]) -> Any:
        """The scorer's answer to `call(deadline)`, raised when it is an error; a 504 when the deadline
        passes first (the call is cancelled)."""
        timeout = self._config.request_timeout_s
        try:
            answer = await asyncio.wait_for(self._health.call(call(time.time() + timeout)), timeout)
        except TimeoutError:
            raise RequestTimeoutError(f"the request took longer than {timeout} s and was abandoned") from None
        if isinstance(answer, ServingError):
            raise answer
        return answer
