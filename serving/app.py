"""The application builder: ingress -> scorer (one call per request), configured from one ServingConfig.

Admission control is Serve's: each deployment takes `max_ongoing_requests` per replica and queues
at most `max_queued_requests` more per caller; beyond that a call fails at once and the client gets
a 503 with Retry-After instead of a queue that grows without bound: grec's JSON 503 when the scorer
is full (serving/health.py), Serve's own (plain text, from its proxy) when the ingress's queue is,
with the same Retry-After (Serve's backpressure_config). Replica counts and Serve's health checks
come from the same config.

`serve.run(build_app(config))` starts it on a running Ray (the HTTP host and port are Serve's
proxy options, set by `serve.start`; `grec serve` does both).
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from serving.config import ReplicaConfig, ServingConfig
from serving.deployments import Scorer
from serving.ingress import Ingress


def deployment_options(replicas: ReplicaConfig, retry_after_s: int, access_log: bool) -> dict[str, Any]:
    """Serve's options of one deployment: replicas, admission, health checks, the Retry-After of
    Serve's own 503s, access log."""
    return {
        "num_replicas": replicas.num_replicas,
        "max_ongoing_requests": replicas.max_ongoing_requests,
        "max_queued_requests": replicas.max_queued_requests,
        "health_check_period_s": replicas.health_check_period_s,
        "health_check_timeout_s": replicas.health_check_timeout_s,
        "backpressure_config": {"status_code": 503, "retry_after_s": retry_after_s},
        "ray_actor_options": {"num_cpus": replicas.num_cpus},
        "logging_config": {"enable_access_log": access_log},
    }


def build_app(config: ServingConfig) -> Application:
    """The Serve application for `config` (not started: pass it to `serve.run`)."""
    # One access-log line per HTTP request (the ingress, with its request id) is enough; the
    # scorer's call would double the log volume on the hot path.
    retry_after_s = config.retry_after_s
    scorer = Scorer.options(**deployment_options(config.scorer, retry_after_s, access_log=False)).bind(config)
    return Ingress.options(**deployment_options(config.ingress, retry_after_s, access_log=True)).bind(config, scorer)
