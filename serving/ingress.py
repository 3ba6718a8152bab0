"""The FastAPI ingress: versioned routes, validation, auth, and the calls to feature lookup and ranker.

No `from __future__ import annotations` here: FastAPI reads the route signatures' annotations, and
Serve's class-based views rewrite those functions, so the annotations must be real objects.
"""

import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request, Response
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving import metrics
from serving.config import ServingConfig
from serving.errors import BadRequestError, ModelNotReadyError, RequestTimeoutError, TooManyCandidatesError
from serving.features import RequestRows
from serving.http import RequestEnvelope, install_error_handlers, request_id_of, require_token
from serving.ranking import RankRequest, RankResult
from serving.schemas import (
    ErrorResponse,
    HealthResponse,
    ModelRef,
    ModelResponse,
    RecommendRequest,
    RecommendResponse,
    RowScore,
    ScoredItem,
    ScoreRequest,
    ScoreResponse,
    TaskInfo,
    TasksResponse,
)

T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in (
        (400, "malformed JSON"), (401, "missing or wrong bearer token"), (413, "payload too large"),
        (422, "invalid request: wrong types, unknown task, too many or no candidates, unknown context feature"),
        (503, "model not ready"), (504, "timed out"),
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
# Every /v1 route: the bearer-token check and the documented error answers.
_V1: dict[str, Any] = {"dependencies": [Depends(require_token)], "responses": _ERRORS}


@serve.deployment
@serve.ingress(app)
class Ingress:
    def __init__(self, config: ServingConfig, lookup: DeploymentHandle, ranker: DeploymentHandle) -> None:
        self._config = config
        self._lookup = lookup
        self._ranker = ranker
        app.state.api_token = config.api_token.get_secret_value() if config.api_token else None
        app.state.max_body_bytes = config.max_body_bytes

    async def _within_timeout(self, work: Awaitable[T]) -> T:
        try:
            return await asyncio.wait_for(work, self._config.request_timeout_s)
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request took longer than {self._config.request_timeout_s} s and was abandoned") from None

    # ---- /v1 ---------------------------------------------------------------------------------------
    @app.post("/v1/recommend", **_V1, response_model=RecommendResponse, summary="Top-k items for a user and a task")
    async def recommend(self, body: RecommendRequest, request: Request) -> RecommendResponse:
        if body.k > self._config.max_k:
            raise BadRequestError(f"k is {body.k}; this endpoint returns at most {self._config.max_k} items")
        if body.candidates is not None:
            self._check_candidate_count(len(body.candidates))
        return await self._within_timeout(self._recommend(body, request_id_of(request)))

    async def _recommend(self, body: RecommendRequest, request_id: str) -> RecommendResponse:
        source = "request"
        candidates = body.candidates
        if candidates is None:
            history = await self._lookup.history.remote(body.user_id)
            size = max(self._config.retrieval_size, body.k)
            candidates, source = await self._ranker.candidates.remote(history, min(size, self._config.max_candidates))
        candidates = list(dict.fromkeys(candidates))  # a repeated id is ranked once
        found: RequestRows = await self._lookup.rows.remote(body.user_id, candidates, body.context)
        result = await self._rank("recommend", body.task, found)
        order = sorted(range(len(candidates)), key=lambda i: -result.scores[i])[: body.k]
        if found.cold_start:
            metrics.COLD_START.inc()
        return RecommendResponse(
            request_id=request_id, model=ModelRef(**result.model), task=body.task, user_id=body.user_id,
            cold_start=found.cold_start, candidates_from=source,
            items=[ScoredItem(item_id=candidates[i], score=result.scores[i], known_item=result.known_items[i])
                   for i in order],
        )

    @app.post("/v1/score", **_V1, response_model=ScoreResponse, summary="Scores of explicit (user, item, task) rows")
    async def score(self, body: ScoreRequest, request: Request) -> ScoreResponse:
        self._check_candidate_count(len(body.rows))
        return await self._within_timeout(self._score(body, request_id_of(request)))

    async def _score(self, body: ScoreRequest, request_id: str) -> ScoreResponse:
        # Rows sharing user, task and context are looked up and ranked together.
        groups: dict[tuple[Any, ...], list[int]] = {}
        for index, row in enumerate(body.rows):
            key = (type(row.user_id).__name__, row.user_id, row.task, json.dumps(row.context, sort_keys=True))
            groups.setdefault(key, []).append(index)

        async def run(indices: list[int]) -> tuple[list[int], RequestRows, RankResult]:
            first = body.rows[indices[0]]
            found = await self._lookup.rows.remote(first.user_id, [body.rows[i].item_id for i in indices],
                                                   first.context)
            return indices, found, await self._rank("score", first.task, found)

        scores: list[RowScore | None] = [None] * len(body.rows)
        model: dict[str, Any] = {}
        for indices, found, result in await asyncio.gather(*(run(ix) for ix in groups.values())):
            model = result.model
            for j, index in enumerate(indices):
                row = body.rows[index]
                probabilities = result.class_probabilities[j] if result.class_probabilities else None
                scores[index] = RowScore(user_id=row.user_id, item_id=row.item_id, task=row.task,
                                         score=result.scores[j], class_probabilities=probabilities,
                                         cold_start=found.cold_start, known_item=result.known_items[j])
        return ScoreResponse(request_id=request_id, model=ModelRef(**model), scores=scores)

    @app.get("/v1/tasks", **_V1, response_model=TasksResponse, summary="Tasks the loaded model serves")
    async def tasks(self) -> TasksResponse:
        info = await self._describe()
        return TasksResponse(model=ModelRef(name=info["name"], version=info["version"], alias=info["alias"]),
                             tasks=[TaskInfo(**task) for task in info["task_specs"]])

    @app.get("/v1/model", **_V1, response_model=ModelResponse, summary="The loaded model version")
    async def model(self) -> ModelResponse:
        info = await self._describe()
        return ModelResponse(**{k: v for k, v in info.items() if k != "task_specs"})

    # ---- unversioned operations routes ---------------------------------------------------------------
    @app.get("/healthz", response_model=HealthResponse, summary="Liveness: the ingress answers")
    async def healthz(self) -> HealthResponse:
        return HealthResponse(status="ok")

    @app.get("/readyz", response_model=HealthResponse, responses={503: {"model": ErrorResponse}},
             summary="Readiness: a model version is loaded and answering")
    async def readyz(self) -> HealthResponse:
        info = await self._describe()
        return HealthResponse(status="ok", model_version=info["version"])

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus(self) -> Response:
        body, content_type = metrics.exposition()
        return Response(content=body, media_type=content_type)

    # ---- helpers --------------------------------------------------------------------------------------
    def _check_candidate_count(self, count: int) -> None:
        if count == 0:
            raise BadRequestError("candidates is empty; omit it to retrieve candidates from the catalog")
        if count > self._config.max_candidates:
            raise TooManyCandidatesError(
                f"{count} candidates or rows; this endpoint takes at most {self._config.max_candidates}")

    async def _rank(self, route: str, task: str, found: RequestRows) -> RankResult:
        result: RankResult = await self._ranker.rank.remote(RankRequest(task, found.rows))
        if result.error is not None:
            raise result.error
        # Counted once the task is known to exist, so label values stay the model's task names.
        metrics.REQUESTS_BY_TASK.labels(route, task).inc()
        metrics.BATCH_SIZE.observe(result.batch_size)
        metrics.ROWS_SCORED.observe(len(result.scores))
        return result

    async def _describe(self) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(self._ranker.describe.remote(), self._config.request_timeout_s)
        except TimeoutError:
            raise ModelNotReadyError("the ranker did not answer; no model version is ready") from None

