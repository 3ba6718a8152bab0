"""The application builder: ingress -> feature lookup -> ranker, configured from one ServingConfig.

Admission control is Serve's: each deployment takes `max_ongoing_requests` per replica and queues
at most `max_queued_requests` more per caller; beyond that a call fails at once and the client gets
a 503 with Retry-After (serving/health.py, serving/http.py) instead of a queue that grows without
bound. Replica counts and Serve's health checks come from the same config.

`serve.run(build_app(config))` starts it on a running Ray (the HTTP host and port are Serve's
proxy options, set by `serve.start`; `grec serve` does both).
"""

from __future__ import annotations

from ray.serve import Application

from serving.config import ReplicaConfig, ServingConfig
from serving.deployments import FeatureLookup, Ranker
from serving.ingress import Ingress


def _options(replicas: ReplicaConfig, access_log: bool) -> dict:
    return {
        "num_replicas": replicas.num_replicas,
        "max_ongoing_requests": replicas.max_ongoing_requests,
        "max_queued_requests": replicas.max_queued_requests,
        "health_check_period_s": replicas.health_check_period_s,
        "health_check_timeout_s": replicas.health_check_timeout_s,
        "ray_actor_options": {"num_cpus": replicas.num_cpus},
        "logging_config": {"enable_access_log": access_log},
    }


def build_app(config: ServingConfig) -> Application:
    """The Serve application for `config` (not started: pass it to `serve.run`)."""
    # One access-log line per HTTP request (the ingress, with its request id) is enough; the
    # internal calls it makes would triple the log volume on the hot path.
    lookup = FeatureLookup.options(**_options(config.features, access_log=False)).bind(config)
    ranker = Ranker.options(**_options(config.ranker, access_log=False)).bind(config)
    return Ingress.options(**_options(config.ingress, access_log=True)).bind(config, lookup, ranker)
