"""Prometheus metrics of the endpoint, exported by the ingress at GET /metrics.

They live in their own registry so that the exposition holds exactly what the endpoint measures.
Batch sizes are observed where batches form (the ranker) and reported back with each result, so
one scrape of the ingress sees them too.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

REQUEST_LATENCY = Histogram(
    "grec_request_latency_seconds",
    "End-to-end latency of a request inside the ingress, by route and status code.",
    ["route", "status"],
    registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REQUESTS_BY_TASK = Counter(
    "grec_requests_by_task_total",
    "Ranking and scoring requests by task.",
    ["route", "task"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "grec_errors_total",
    "Failed requests by error kind (unknown_task, invalid_request, unauthorized, timeout, internal, ...).",
    ["kind"],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "grec_ranker_batch_requests",
    "Requests grouped into one ranker batch (@serve.batch), as seen by the requests in it.",
    registry=REGISTRY,
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ROWS_SCORED = Histogram(
    "grec_ranker_rows_per_request",
    "Candidate rows scored for one request.",
    registry=REGISTRY,
    buckets=(1, 10, 50, 100, 200, 500, 1000, 5000),
)
COLD_START = Counter(
    "grec_cold_start_total",
    "Requests for users without stored features (served with defaults).",
    registry=REGISTRY,
)


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus text format and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
