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
# A blend weight: a JSON number (1 and 1.0 alike; never "1" or true) of at most MAX_BLEND_WEIGHT in size.
MAX_BLEND_WEIGHT = 1000.0
BlendWeight = Annotated[StrictFloat, Field(allow_inf_nan=False, ge=-MAX_BLEND_WEIGHT, le=MAX_BLEND_WEIGHT)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RecommendRequest(_Body):
    user_id: EntityId = Field(description="the user to recommend for (unknown users get default features)")
    task: StrictStr = Field(min_length=1, description="one of GET /v1/model's recommend_tasks: the model's "
                                                      "tasks and those its recommendation stage ranks for")
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
        description="rank by a weighted sum (name -> weight) of terms standardized over the candidates: tasks' "
                    "scores (binary ones as logits) and the recommendation stage's sources (`covisitation`, "
                    "`next_item`, `popularity`; for candidates the stage chose); `task` counts only if named. "
                    "Omitted: the served config's blend for `task`, else the blend `grec build-index` fitted for "
                    "it on the validation split, else `task`'s score alone")


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
                                     "class (multiclass); for a task only the stage ranks for, the rank score")
    known_item: bool = Field(description="false when the item was not in training data (out of vocabulary)")
    rank_score: float | None = Field(None, description="with a blend: the weighted sum the items are ranked by")
    source_scores: dict[str, float] | None = Field(
        None, description="candidates from the recommendation stage: each source's raw term (co-visitation score, "
                          "next-item logit, log recent interactions)")
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
        description="which source chose the candidates: the request, the model version's recommendation stage "
                    "(`grec build-index`), or popularity (versions without a stage)")
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
    index: bool = Field(description="true when this version has a recommendation stage (`grec build-index`) and "
                                    "the endpoint uses it; popularity candidates otherwise")
    items: int | None = Field(None, description="items in the stage's catalogue")
    sources: list[str] | None = Field(None, description="the stage's candidate sources")
    built_at: str | None = None
    blends: dict[str, dict[str, float]] | None = Field(None, description="per task, the blend fitted on validation")


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
    recommend_tasks: list[str] = Field(description="tasks /v1/recommend ranks for: the model's and those its "
                                                   "recommendation stage has a blend for")
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
