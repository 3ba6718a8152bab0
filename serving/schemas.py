"""The HTTP API's request and response bodies (they are also what the OpenAPI schema publishes)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr



def _integral_float_as_int(value: Any) -> Any:
    # JSON Schema counts 12.0 as the integer 12 (and the published schema says "integer"), so a
    # client or fuzzer may send it; any other float stays a float and is refused as an integer.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# A JSON integer: 12 or 12.0, never "12" or true.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral_float_as_int)]
# Raw ids as the data has them (MovieLens uses integers, other sources strings); strings are never
# coerced, so "12" and 12 stay different ids exactly as they are in the feature store.
EntityId = JsonInt | StrictStr
ContextValue = StrictStr | JsonInt | StrictFloat | StrictBool | list[StrictStr | JsonInt]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Body):
    user_id: EntityId = Field(description="the user to recommend for (unknown users get default features)")
    task: StrictStr = Field(min_length=1, description="one of GET /v1/tasks")
    candidates: list[EntityId] | None = Field(
        None, description="item ids to rank; omitted = retrieve candidates from the catalog first"
    )
    k: JsonInt = Field(10, ge=1, description="how many items to return")
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
    cold_start: bool = Field(description="true when the user's stored features were not used: defaults were")
    features_degraded: bool = Field(
        description="true when the online store did not answer and every feature was a default")
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
    features_degraded: bool = Field(
        description="true when the online store did not answer and every feature was a default")
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
    status: Literal["ok"]
    model_version: str | None = None
    features_degraded: bool | None = Field(
        None, description="readiness only: true while the online store is not answering and default features "
                          "are served")
