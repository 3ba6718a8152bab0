"""The OpenAPI document says exactly what the server accepts, so clients and fuzzers agree with it.

FastAPI's document comes from the static request models; what the server really checks depends on
the configuration (candidate, row and k limits) and on the served model version (its task names,
its id types, its context features). `openapi_document` patches those in, and the ingress
regenerates the document when the served version changes.
"""

from __future__ import annotations

import copy
from typing import Any

import pyarrow as pa

from feature_store.definitions import DatasetDefinition
from serving.config import ServingConfig
from serving.schemas import MAX_BLEND_WEIGHT

INT64 = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}


def value_schema(dtype: pa.DataType) -> dict[str, Any]:
    """The JSON schema of a JSON value the server turns into `dtype`."""
    if pa.types.is_integer(dtype):
        return dict(INT64)
    if pa.types.is_floating(dtype):
        return {"type": "number"}
    if pa.types.is_boolean(dtype):
        return {"type": "boolean"}
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return {"type": "array", "items": value_schema(dtype.value_type)}
    return {"type": "string"}


def request_value_schemas(definition: DatasetDefinition) -> dict[str, Any]:
    """JSON schemas of the ids and context features a model version's data takes."""
    return {
        "user_id": value_schema(definition.user.dtype),
        "item_id": value_schema(definition.item.dtype),
        "context": {feature.name: value_schema(feature.dtype) for feature in definition.context_features},
    }


def _context_schema(values: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [{"type": "object", "properties": values["context"], "additionalProperties": False},
                      {"type": "null"}],
            "description": "request-time context features by name (the model's `context` features)"}


def openapi_document(base: dict[str, Any], config: ServingConfig, tasks: list[str], values: dict[str, Any],
                     recommend_tasks: list[str] | None = None, sources: list[str] = ()) -> dict[str, Any]:
    """`base` (FastAPI's document) with the limits of `config` and the tasks, id types and context
    features (`values`, from `request_value_schemas`) of the served version; `recommend_tasks`: what
    /v1/recommend ranks for (default `tasks`), `sources`: its recommendation stage's terms."""
    document = copy.deepcopy(base)
    schemas = document["components"]["schemas"]
    task = {"type": "string", "enum": list(tasks), "description": "one of GET /v1/tasks"}
    recommend_task = {"type": "string", "enum": list(recommend_tasks or tasks),
                      "description": "one of GET /v1/model's recommend_tasks"}

    recommend = schemas["RecommendRequest"]["properties"]
    recommend["user_id"] = {**values["user_id"], "description": recommend["user_id"].get("description", "")}
    recommend["task"] = recommend_task
    recommend["k"] = {"type": "integer", "minimum": 1, "maximum": config.max_k, "default": 10,
                      "description": "how many items to return"}
    recommend["candidates"] = {
        "anyOf": [{"type": "array", "items": values["item_id"], "minItems": 1, "maxItems": config.max_candidates},
                  {"type": "null"}],
        "description": "item ids to rank (a repeated id is ranked once); omitted or null = retrieve "
                       "candidates from the catalog first",
    }
    recommend["context"] = _context_schema(values)
    recommend["blend"] = {
        "anyOf": [{"type": "object", "propertyNames": {"enum": [*tasks, *sources]}, "minProperties": 1,
                   "additionalProperties": {"type": "number", "minimum": -MAX_BLEND_WEIGHT,
                                            "maximum": MAX_BLEND_WEIGHT}},
                  {"type": "null"}],
        "description": recommend["blend"].get("description", ""),
    }

    row = schemas["ScoreRow"]["properties"]
    row["user_id"], row["item_id"], row["task"] = values["user_id"], values["item_id"], task
    row["context"] = _context_schema(values)
    rows = schemas["ScoreRequest"]["properties"]["rows"]
    rows.update({"minItems": 1, "maxItems": config.max_candidates})
    rows["description"] = (f"explicit (user, item, task) rows to score; at most {config.max_score_groups} "
                           "distinct (user, context) pairs")

    if config.api_token is not None:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        for path, operations in document["paths"].items():
            if path.startswith("/v1/"):
                for operation in operations.values():
                    operation["security"] = [{"bearer": []}]
    return document
