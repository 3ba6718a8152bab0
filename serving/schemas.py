"""The HTTP API's request and response bodies (they are also what the OpenAPI schema publishes)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

# Raw ids as the data has them (MovieLens uses integers, other sources strings); never coerced,
# so "12" and 12 stay different ids exactly as they are in the feature store.
EntityId = StrictInt | StrictStr
ContextValue = StrictStr | StrictInt | StrictFloat | StrictBool


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Body):
    user_id: EntityId = Field(description="the user to recommend for (unknown users get default features)")
    task: StrictStr = Field(min_length=1, description="one of GET /v1/tasks")
    candidates: list[EntityId] | None = Field(
        None, description="item ids to rank; omitted = retrieve candidates from the catalog first"
    )
    k: StrictInt = Field(10, ge=1, description="how many items to return")
    context: dict[str, ContextValue] | None = Field(
        None, description="request-time context features by name (the model's `context` features)"
    )


class ScoreRow(_Body):
    user_id: EntityId
    item_id: EntityId
    task: StrictStr = Field(min_length=1)
    context: dict[str, ContextValue] | None = None


class ScoreRequest(_Body):
    rows: list[ScoreRow] = Field(min_length=1, description="explicit (user, item, task) rows to score")


class ModelRef(BaseModel):
    """Which registered model version produced an answer."""

    name: str
    version: str
    alias: str | None


class ScoredItem(BaseModel):
    item_id: EntityId
    score: float = Field(description="probability (binary), value (regression), expected class (multiclass)")
    known_item: bool = Field(description="false when the item was not in training data (out of vocabulary)")


class RecommendResponse(BaseModel):
    request_id: str
    model: ModelRef
    task: str
    user_id: EntityId
    cold_start: bool = Field(description="true when the user has no stored features: defaults were used")
    candidates_from: Literal["request", "popularity", "similarity"]
    items: list[ScoredItem]


class RowScore(BaseModel):
    user_id: EntityId
    item_id: EntityId
    task: str
    score: float
    class_probabilities: list[float] | None = Field(None, description="multiclass tasks only")
    cold_start: bool
    known_item: bool


class ScoreResponse(BaseModel):
    request_id: str
    model: ModelRef
    scores: list[RowScore]


class TaskInfo(BaseModel):
    name: str
    kind: str
    role: str
    num_classes: int | None
    descriptors: dict[str, str]


class TasksResponse(BaseModel):
    model: ModelRef
    tasks: list[TaskInfo]


class ModelResponse(BaseModel):
    name: str
    version: str
    alias: str | None
    uri: str
    tasks: list[str]
    loaded_at: str = Field(description="when this version was loaded, ISO 8601 UTC")
    per_task_submodels: bool = Field(description="true when each task runs its own exported sub-model")


class ErrorDetail(BaseModel):
    kind: str = Field(description="machine-readable error kind, e.g. unknown_task, payload_too_large")
    message: str
    request_id: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: Literal["ok", "loading"]
    model_version: str | None = None
