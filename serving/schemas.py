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
# The blend's name for the candidates' retrieval logits (from the version's retrieval index).
RETRIEVAL_TERM = "retrieval"
# A blend weight: a JSON number (1 and 1.0 alike; never "1" or true) of at most MAX_BLEND_WEIGHT in size.
MAX_BLEND_WEIGHT = 1000.0
BlendWeight = Annotated[StrictFloat, Field(allow_inf_nan=False, ge=-MAX_BLEND_WEIGHT, le=MAX_BLEND_WEIGHT)]


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
    exclude_seen: StrictBool = Field(
        True, description="leave out items the user already interacted with (from every candidate source, the "
                          "request's own candidates included); false allows repeats (re-watch, re-purchase)")
    blend: dict[StrictStr, BlendWeight] | None = Field(
        None, min_length=1,
        description="rank by a weighted sum (name -> weight) of scores standardized over the candidates: tasks' "
                    "scores and `retrieval`, the retrieval logit of candidates from the index; `task` counts only "
                    "if named. Omitted: the served config's blend for `task`, else retrieved candidates by `task` "
                    "and `retrieval` (weights 1 and the config's retrieval_weight), others by `task`'s score")


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
    score: float = Field(description="the request task's probability (binary), value (regression), expected "
                                     "class (multiclass)")
    known_item: bool = Field(description="false when the item was not in training data (out of vocabulary)")
    rank_score: float | None = Field(None, description="with a blend: the weighted sum the items are ranked by")
    retrieval_logit: float | None = Field(
        None, description="candidates from the retrieval index: the two-tower's logit (a log-probability up to a "
                          "constant)")
    task_scores: dict[str, float] | None = Field(None, description="with a blend: each scored task's own score")


class RecommendResponse(BaseModel):
    request_id: str
    model: ModelRef
    task: str
    user_id: EntityId
    cold_start: bool = Field(description="true when the user's stored features were not used: defaults were")
    features_degraded: bool = Field(
        description="true when the online store did not answer and every feature was a default")
    candidates_from: Literal["request", "retrieval", "popularity"] = Field(
        description="which source chose the candidates: the request, the model version's retrieval index, or "
                    "popularity (users the store does not know, versions without an index)")
    user_encoding: Literal["stored", "online"] = Field(
        description="where the model's user side came from: `stored`, the user's representation that "
                    "`grec encode-users` wrote for this model version, fresh for the user's current features; "
                    "`online`, computed for this request")
    blend: dict[str, float] | None = Field(
        None, description="the weights the items are ranked by (`rank_score`); null when ranked by `score` alone")
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


class RetrievalInfo(BaseModel):
    index: bool = Field(description="true when this version has a retrieval index (`grec build-index`) and the "
                                    "endpoint uses it; popularity otherwise")
    items: int | None = Field(None, description="items in the index")
    kind: str | None = Field(None, description="the ANN index: hnsw (approximate) or flat (exact)")
    built_at: str | None = None
    positive_task: str | None = Field(None, description="the task whose positive rows trained the two-tower")


class RefusedVersionInfo(BaseModel):
    version: str = Field(description="the version the alias names and that is not served")
    reason: str = Field(description="why, a stable kind: digest_mismatch, size_mismatch, missing_file, unlisted_file, "
                                    "no_manifest, bad_manifest, unreadable_layout, unreadable_files")
    message: str = Field(description="the check that failed: the file, and the expected and found sha256 or size")
    at: str = Field(description="when it was refused, ISO 8601 UTC")


class ModelResponse(BaseModel):
    name: str
    version: str
    alias: str | None
    uri: str
    tasks: list[str]
    loaded_at: str = Field(description="when this version was loaded, ISO 8601 UTC")
    per_task_submodels: bool = Field(description="true when each task runs its own exported sub-model")
    precision: Literal["fp32", "bf16", "fp16", "int8"] = Field(
        description="how the version's weights are stored (`grec quantize`): fp32, bf16 / fp16 (computing in "
                    "float32), or int8")
    retrieval: RetrievalInfo
    refused: RefusedVersionInfo | None = Field(
        None, description="set while the alias names a version whose files failed their checks: this version "
                          "keeps answering until the alias moves to one that passes")


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
