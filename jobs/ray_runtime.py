"""Ray for grec's jobs: join a cluster (`--address` or RAY_ADDRESS) or start a bounded local one.

The embedded default starts a local Ray with a capped object store and no dashboard, and stops it
when the job ends. When Ray is already running in this process (a test session, a notebook), it is
reused and left running.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

# The local object store gets this share of the machine's memory, at most LOCAL_OBJECT_STORE_MAX.
LOCAL_OBJECT_STORE_FRACTION = 0.2
LOCAL_OBJECT_STORE_MAX = 2 * 1024**3
LOCAL_OBJECT_STORE_MIN = 256 * 1024**2
# Environment the Ray workers must share with the driver (DeepSpeed's prebuilt ops, offline hubs).
PROPAGATED_ENV = ("TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# Ray Train's INFO lines in the workers (each checkpoint's path and report, every epoch) buried the
# job's own progress lines. (Ray Data configures its loggers itself, after this hook runs.)
QUIET_WORKER_LOGGERS = ("ray.train",)
# Train's placement-group cleaner asks the state API, which a local Ray without a dashboard lacks,
# whether the controller lives, and warns every few seconds that it cannot; a local Ray's placement
# groups end with it anyway.
LOCAL_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"


def local_object_store_bytes() -> int:
    """The object-store cap of a local Ray: a share of physical memory within fixed bounds."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(LOCAL_OBJECT_STORE_MAX, max(LOCAL_OBJECT_STORE_MIN, total * LOCAL_OBJECT_STORE_FRACTION)))


def worker_env() -> dict[str, str]:
    """The variables of PROPAGATED_ENV that are set here, for a Ray runtime_env."""
    return {name: os.environ[name] for name in PROPAGATED_ENV if name in os.environ}


def quiet_worker_logs() -> None:
    """Runs in every worker process of a grec job (Ray's worker_process_setup_hook)."""
    for name in QUIET_WORKER_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def quiet_local_worker_logs() -> None:
    """`quiet_worker_logs` for a local Ray, which runs without a dashboard."""
    quiet_worker_logs()
    logging.getLogger(LOCAL_CLEANER_LOGGER).setLevel(logging.ERROR)


def _import_path(function) -> str:
    """How a Ray worker imports `function` (a setup hook is named, not pickled)."""
    return f"{function.__module__}.{function.__qualname__}"


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                object_store_memory: int | None = None) -> Iterator[None]:
    """Ray for the duration of the block. `address` (else $RAY_ADDRESS) joins that cluster; without
    one a local Ray starts with `num_cpus` (default: all) and a bounded object store."""
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local Ray needs no token
    address = address or os.environ.get("RAY_ADDRESS") or None
    setup_hook = quiet_worker_logs if address else quiet_local_worker_logs
    runtime_env = {"env_vars": worker_env(), "worker_process_setup_hook": _import_path(setup_hook)}
    if address:
        logger.info("joining the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    else:
        store = object_store_memory or local_object_store_bytes()
        logger.info("starting a local Ray (%s CPUs, object store %.0f MiB)", num_cpus or "all", store / 2**20)
        ray.init(num_cpus=num_cpus, object_store_memory=store, include_dashboard=False, runtime_env=runtime_env)
    try:
        yield
    finally:
        ray.shutdown()
