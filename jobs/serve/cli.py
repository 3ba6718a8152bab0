"""`grec serve`: start the recommendation endpoint on a local or existing Ray cluster."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.options import add_require_integrity, add_tracking_uri

if TYPE_CHECKING:
    from serving.config import ServingConfig

log = logging.getLogger(__name__)
# The Serve application `grec serve` runs (its name in Ray Serve).
APPLICATION = "grec"
# Ray Serve's throughput-optimized mode. Serve's controller, proxies and replicas read these, so they
# must be in the environment of the processes Ray starts: set before a local Ray starts, or on a
# cluster's nodes.
THROUGHPUT_OPTIMIZED_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the registry's model over HTTP (Ray Serve)",
        description="Start the recommendation endpoint on Ray Serve: a FastAPI ingress and the scorer "
                    "(online feature lookup, candidates and batched per-task ranking of a request in one replica), loading the model the registry alias names and following "
                    "the alias when it moves. Stops on Ctrl-C.",
    )
    p.add_argument("--model", required=True, metavar="URI",
                   help="registered model: models:/NAME@ALIAS (followed as it moves) or models:/NAME/VERSION")
    p.add_argument("--online-store", metavar="URL_OR_PATH",
                   help="online store: redis://host:port/db, sqlite:///PATH or a file path (default: "
                        ".grec/online.sqlite under the working directory, where `grec data materialize` writes); "
                        "it must exist: a missing or unreadable store stops the start")
    p.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port to listen on (default 8000)")
    p.add_argument("--token-env", default="GREC_API_TOKEN", metavar="VAR",
                   help="environment variable holding the bearer token that guards /v1 (default GREC_API_TOKEN; "
                        "unset variable = no token)")
    p.add_argument("--max-candidates", type=int, default=None, metavar="N",
                   help="most candidates (or score rows) one request may send (default 1000)")
    p.add_argument("--reload-interval", type=float, default=None, metavar="SECONDS",
                   help="how often the registry alias is checked for a new version (default 30)")
    p.add_argument("--retrieval", choices=("index", "popularity"), default=None,
                   help="how candidates are chosen when a request brings none: the model version's retrieval "
                        "index (`grec build-index`; popularity for unknown users and versions without one), the "
                        "default, or always popularity")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="serving config (JSON or YAML) with any ServingConfig field; flags override it")
    add_tracking_uri(p)
    p.add_argument("--address", metavar="RAY_ADDRESS",
                   help="join this Ray cluster instead of starting a local one")
    add_require_integrity(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from feature_store.online import open_online_store
    from registry.models import resolve_version, version_files
    from registry.tracking import use_tracking_uri
    from serving.config import ServingConfig

    # Bad input raises ServingConfigError, a registry ValueError or OnlineStoreUnavailableError (a
    # ConnectionError): `grec`'s one error path reports it as `grec serve: error: ...`, exit 2.
    config = ServingConfig.load(
        {"model_uri": args.model, "online_store": args.online_store, "host": args.host, "port": args.port,
         "max_candidates": args.max_candidates, "reload_interval_s": args.reload_interval,
         "retrieval": args.retrieval, "tracking_uri": args.tracking_uri,
         "require_integrity": args.require_integrity or None},
        file=args.config, token_env=args.token_env,
    )
    with use_tracking_uri(config.tracking_uri) as tracking_uri:
        # Fail here, with the registry's message, rather than in every replica's constructor.
        name, version = resolve_version(config.model_uri)
        # Likewise for the online store: missing, unreadable or unreachable stops the start.
        open_online_store(config.online_store).close()
        # And for a version that does not exist, or has no manifest when integrity is required.
        try:
            version_files(name, version, require_integrity=config.require_integrity)
        except MlflowException as err:  # e.g. no such version: bad input, not a crash
            raise ValueError(f"cannot load {config.model_uri} from the MLflow registry: {err.message}") from None
    log.info("serving %s (now version %s of %s) from %s", config.model_uri, version, name, tracking_uri)
    if config.api_token is None:
        log.warning("no bearer token in $%s: /v1 routes are open to anyone who can reach %s:%d",
                    args.token_env, config.host, config.port)
    # The replicas get the resolved store explicitly: they may run on other nodes.
    serve_forever(config.model_copy(update={"tracking_uri": tracking_uri}), args.address)
    return 0


def serve_forever(config: ServingConfig, address: str | None) -> None:
    """Starts Ray (or joins `address`), runs the application and blocks until SIGINT/SIGTERM."""
    from ray import serve

    from jobs.ray_runtime import ray_session
    from serving.app import build_app

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    if config.throughput_optimized:
        _use_throughput_optimized(address)
    with ray_session(address):
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_app(config), name=APPLICATION, route_prefix="/")
        print(f"grec serve: {config.model_uri} on http://{config.host}:{config.port} "
              f"(OpenAPI: /docs, metrics: /metrics); Ctrl-C stops", flush=True)
        stop.wait()
        # Only this application, its replicas drained: on a joined cluster Serve may run others, and a
        # local Ray ends with the block (serve.shutdown() also killed Serve's controller under a call
        # it was answering, which Ray reported on the terminal as a failed task).
        serve.delete(APPLICATION)


def _use_throughput_optimized(address: str | None) -> None:
    """Puts Serve's throughput-optimized mode into the environment of the local Ray about to start."""
    from ray.serve._private.constants import RAY_SERVE_HAPROXY_METRICS_PORT, RAY_SERVE_HAPROXY_STATS_PORT

    address = address or os.environ.get("RAY_ADDRESS")
    if address and address != "local":
        log.warning("throughput_optimized: the cluster at %s runs the mode its nodes were started with; set %s in "
                    "their environment", address, " and ".join(f"{k}=1" for k in THROUGHPUT_OPTIMIZED_ENV))
        return
    os.environ.update(THROUGHPUT_OPTIMIZED_ENV)
    log.warning("throughput-optimized mode: HAProxy is the HTTP ingress; its stats (port %d) and Prometheus "
                "(port %d) listeners bind every interface without auth (Ray Serve offers no loopback setting)",
                RAY_SERVE_HAPROXY_STATS_PORT, RAY_SERVE_HAPROXY_METRICS_PORT)
