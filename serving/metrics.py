"""The endpoint's metrics: recorded with Ray's metrics API in every replica, served summed over replicas.

Why not a prometheus_client registry per process: with several ingress or scorer replicas,
GET /metrics would show whichever replica answered. Instead each replica records into
`ray.util.metrics`; Ray's metrics agent on every node exports what all processes of that node
recorded, in Prometheus format, as `ray_grec_*` with one series per worker process. A Prometheus
that scrapes Ray's nodes (the documented set-up on a cluster) sees exactly that. The ingress's
GET /metrics gathers the same export from every alive node and sums each series over the
per-process labels (worker, node, session), so one scrape sees the whole application. Serve's
built-in `ray_serve_*` metrics (queue lengths, replica health, per-deployment latency) come along.
Values lag the events by Ray's metrics report interval (seconds), and Ray computes a histogram's
`_sum` from bucket midpoints (its buckets and `_count` are exact).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Iterable
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("ray.serve")

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
ROW_BUCKETS = (1, 10, 50, 100, 200, 500, 1000, 5000)
# Families GET /metrics serves: grec's own and Serve's (Ray prefixes every exported name with ray_).
SERVED_PREFIXES = ("ray_grec_", "ray_serve_")
# Labels Ray adds per process or node; summing over them gives the application-wide series.
PER_PROCESS_LABELS = frozenset({"WorkerId", "Component", "NodeAddress", "SessionName", "Version",
                                "otel_scope_name", "otel_scope_schema_url", "otel_scope_version"})


@functools.cache
def _metric(kind: str, name: str, description: str, tag_keys: tuple[str, ...] = (),
            boundaries: tuple[float, ...] | None = None) -> Any:
    # Created on first use in the process that records (a replica), never at import in the driver.
    from ray.util import metrics

    if kind == "histogram":
        return metrics.Histogram(name, description, boundaries=list(boundaries or ()), tag_keys=tag_keys)
    return metrics.Counter(name, description, tag_keys=tag_keys)


def observe_request(route: str, status: int, seconds: float) -> None:
    _metric("histogram", "grec_request_latency_seconds",
            "End-to-end latency of a request inside the ingress, by route and status code.",
            ("route", "status"), LATENCY_BUCKETS_S).observe(seconds, tags={"route": route, "status": str(status)})


def count_task(route: str, task: str) -> None:
    _metric("counter", "grec_requests_by_task_total", "Ranking and scoring requests by task.",
            ("route", "task")).inc(tags={"route": route, "task": task})


def count_error(kind: str) -> None:
    _metric("counter", "grec_errors_total",
            "Failed requests by error kind (unknown_task, invalid_request, unauthorized, overloaded, timeout, ...).",
            ("kind",)).inc(tags={"kind": kind})


def observe_batch(requests: int) -> None:
    _metric("histogram", "grec_ranker_batch_requests",
            "Requests grouped into one ranker batch (@serve.batch).", (), BATCH_BUCKETS).observe(requests)
    # Ray exports a histogram's _sum from bucket midpoints, not the observed values: two counters
    # give the exact mean batch (requests / batches).
    _metric("counter", "grec_ranker_batches_total", "Ranker batches run.").inc()
    _metric("counter", "grec_ranker_batched_requests_total", "Requests ranked in batches.").inc(requests)


def observe_rows(rows: int) -> None:
    _metric("histogram", "grec_ranker_rows_per_request", "Candidate rows scored for one request.",
            (), ROW_BUCKETS).observe(rows)


def count_cold_start(users: int = 1) -> None:
    if users > 0:
        _metric("counter", "grec_cold_start_total",
                "Users looked up without stored features (served with defaults).").inc(users)


def count_user_encoding(source: str, reason: str) -> None:
    _metric("counter", "grec_user_encoding_total",
            "Ranking lookups by where the user side came from: source stored (the online store's representation "
            "for the served version, fresh) or online (computed by the ranker), and why.",
            ("source", "reason")).inc(tags={"source": source, "reason": reason})


def count_refused_version(version: str, reason: str) -> None:
    _metric("counter", "grec_model_versions_refused_total",
            "Model versions the alias named and the endpoint did not load, by version and reason (digest_mismatch, "
            "size_mismatch, missing_file, unlisted_file, no_manifest, ...); the version before keeps answering.",
            ("version", "reason")).inc(tags={"version": version, "reason": reason})


def count_degraded(reason: str) -> None:
    _metric("counter", "grec_features_degraded_total",
            "Lookups served with default features because the online store did not answer.",
            ("reason",)).inc(tags={"reason": reason})


# ---- GET /metrics ---------------------------------------------------------------------------------


class _Snapshot:
    """A prometheus_client collector over already summed families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def merge_expositions(texts: Iterable[str]) -> list[Metric]:
    """The SERVED_PREFIXES families of Prometheus `texts`, each sample summed over PER_PROCESS_LABELS."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith(SERVED_PREFIXES):
                continue
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type)
                sums[family.name] = {}
            for sample in family.samples:
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k not in PER_PROCESS_LABELS))
                key = (sample.name, labels)
                sums[family.name][key] = sums[family.name].get(key, 0.0) + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in sums[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return list(families.values())


async def exposition(timeout_s: float = 5.0) -> tuple[bytes, str]:
    """Every alive node's grec and Serve metrics, summed over processes, in Prometheus text format."""
    import ray

    nodes = await asyncio.to_thread(ray.nodes)
    urls = [f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
            for node in nodes if node.get("Alive") and node.get("MetricsExportPort")]
    async with httpx.AsyncClient(timeout=timeout_s) as client:
        answers = await asyncio.gather(*(client.get(url) for url in urls), return_exceptions=True)
    texts = []
    for url, answer in zip(urls, answers, strict=True):
        if isinstance(answer, httpx.Response) and answer.status_code == 200:
            texts.append(answer.text)
        else:
            log.warning("metrics of the node at %s could not be read: %s", url, answer)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(merge_expositions(texts)))
    return generate_latest(registry), CONTENT_TYPE_LATEST
