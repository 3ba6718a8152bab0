"""Ray for grec's jobs: join a cluster (`--address` or RAY_ADDRESS) or start a bounded local one.

A local Ray (the embedded default) is closed to other hosts: every Ray server listens on loopback
only, and Ray's token authentication is on (RAY_AUTH_MODE=token) with a token generated once into
the grec directory (`.grec/ray_auth_token`, mode 0600) unless RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH
names one. It has a capped object store and no dashboard, and stops when the job ends.

Joining a cluster uses that cluster's auth as Ray reads it from the environment (RAY_AUTH_MODE=token
with RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH: the cluster's token, not grec's local one); the address
must answer before anything starts. grec's
packages travel to every node with the job's runtime environment (`py_modules`) unless
GREC_SHIP_CODE=0 says the cluster's image already has them.

When Ray is already running in this process (a test session, a notebook), it is reused and left running.

The terminal is grec's: a local Ray keeps its processes' output (workers, actors, Serve replicas, the
raylet) in its session's log files, whose folder the job names when Ray starts, and library lines
that no user can act on are set quieter where they come from (QUIET_LOGGERS and the rest below, each
with its reason). `-v` (grec's loggers at DEBUG) brings every line back to the terminal.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# The local object store gets this share of the machine's memory, at most LOCAL_OBJECT_STORE_MAX.
LOCAL_OBJECT_STORE_FRACTION = 0.2
LOCAL_OBJECT_STORE_MAX = 2 * 1024**3
LOCAL_OBJECT_STORE_MIN = 256 * 1024**2
# Environment the Ray workers must share with the driver (DeepSpeed's prebuilt ops, offline hubs,
# where object storage is, whether registered versions need a manifest). Credentials are not among
# them: a cluster's nodes have their own (instance role, pod identity or node environment), and a
# local Ray's workers inherit this process's.
PROPAGATED_ENV = ("TORCH_EXTENSIONS_DIR", "DS_ACCELERATOR", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                  "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                  "MLFLOW_S3_ENDPOINT_URL", "GREC_REQUIRE_INTEGRITY")
# Of those, paths on the driver's machine: a local Ray's workers share its prebuilt DeepSpeed ops, but
# a cluster's node must keep its own (the ops prebuilt in its image, or its own cache). Given the
# driver's path, a node rebuilt every op there (minutes of compiling) or failed where it did not exist.
DRIVER_LOCAL_ENV = ("TORCH_EXTENSIONS_DIR",)
# grec's packages: what a node needs to run grec's tasks and actors.
GREC_PACKAGES = ("grec", "feature_store", "recommend", "registry", "jobs", "serving")
SHIP_CODE_ENV = "GREC_SHIP_CODE"
SHIPPED_CODE_EXCLUDES = ["__pycache__", "*.pyc"]
# Library lines that buried the job's own progress, set quieter in every worker process:
# - Train's placement-group cleaner asks the state API, which a Ray without a dashboard lacks,
#   whether the controller lives, and warns every few seconds that it cannot (what it would remove,
#   release_orphaned_placement_groups removes where a job leaves any behind);
# - Ray Data announces each finished dataset execution (every validation pass).
QUIET_LOGGERS = {"ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
                 "ray.data._internal.execution.streaming_executor": logging.WARNING,
                 # "Progress bars disabled. To enable, ...": the training job turns them off on purpose
                 "ray.data._internal.progress": logging.ERROR}
# Train's worker says "Reporting training result N: ..." at every report through a logger named after
# its source file (outside `ray.train`, so Train's own log level does not reach it): by path in `ray`.
QUIET_RAY_FILE_LOGGERS = {"train/v2/_internal/execution/context.py": logging.WARNING}
# Warnings about library internals a user cannot act on: DeepSpeed's ZeRO calls a torch collective
# that torch 2.13 marks deprecated, once per worker.
QUIET_WARNINGS = (r".*all_gather_into_tensor.* is deprecated",)
# In the job's own process only (in workers they would empty Serve's log files): Serve's driver-side
# client announces that it started, connected and deployed, which `grec serve` says in its own line.
QUIET_DRIVER_LOGGERS = {"ray.serve": logging.WARNING}
# DeepSpeed warns in every process that it "set the accelerator to CPU" when it finds no GPU; naming
# the accelerator (on a local Ray without GPUs: the machine is the cluster) says the same silently.
DS_ACCELERATOR_ENV = "DS_ACCELERATOR"

GREC_DIR = ".grec"
TOKEN_FILE = "ray_auth_token"
AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
RAY_AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"
RAY_PACKAGING_LOGGER = "ray._private.runtime_env.packaging"
ADDRESS_TIMEOUT_S = 5.0
RAY_CLIENT_PORT = 10001


class RayAddressError(ValueError):
    """The Ray cluster to join does not answer, or refuses this client."""


def local_object_store_bytes() -> int:
    """The object-store cap of a local Ray: a share of physical memory within fixed bounds."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(min(LOCAL_OBJECT_STORE_MAX, max(LOCAL_OBJECT_STORE_MIN, total * LOCAL_OBJECT_STORE_FRACTION)))


def verbose() -> bool:
    """True when grec's loggers are at DEBUG (`-v`): the terminal then shows every library's lines."""
    return logger.isEnabledFor(logging.DEBUG)


def worker_env(*, local: bool) -> dict[str, str]:
    """The variables of PROPAGATED_ENV that are set here, for a Ray runtime_env; for a cluster
    (`local` False) without DRIVER_LOCAL_ENV, the driver's own paths."""
    names = PROPAGATED_ENV if local else tuple(n for n in PROPAGATED_ENV if n not in DRIVER_LOCAL_ENV)
    return {name: os.environ[name] for name in names if name in os.environ}


# ---- authentication and binding -------------------------------------------------------------------
def ray_token_path(grec_dir: str | Path | None = None) -> Path:
    """`<grec dir>/ray_auth_token`, generated (256 random bits, mode 0600) when missing. Concurrent
    callers agree on one token: each writes its own file and links it into place only if none is there."""
    folder = Path(grec_dir or Path.cwd() / GREC_DIR).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TOKEN_FILE
    if not path.exists():
        descriptor, draft = tempfile.mkstemp(dir=folder, prefix=".ray_auth_token.")  # mode 0600
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(secrets.token_hex(32))
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    if path.stat().st_mode & 0o077:
        path.chmod(0o600)  # whoever can read the token can run code in the cluster
    return path


def use_local_token_auth(grec_dir: str | Path | None = None) -> None:
    """Token auth for a Ray started here: the grec directory's token unless RAY_AUTH_TOKEN or
    RAY_AUTH_TOKEN_PATH names one. With RAY_AUTH_MODE unset, `ray.init` of a new local Ray turns
    token mode on itself (Ray 2.59+) for this process and the Ray processes it starts."""
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode not in (None, "token"):
        logger.warning("%s=%s: the local Ray runs WITHOUT token authentication; anyone on this machine "
                       "can run code in it", AUTH_MODE_ENV, mode)
        return
    if not os.environ.get(TOKEN_ENV) and not os.environ.get(TOKEN_PATH_ENV):
        os.environ[TOKEN_PATH_ENV] = str(ray_token_path(grec_dir))


def use_loopback() -> bool:
    """Keeps this process's Ray on 127.0.0.1; returns the previous setting.

    On Linux Ray replaces a loopback node address with the host's external one (for other hosts to
    reach) and its servers then listen on every interface. Its single-host mode, the default on
    macOS and Windows, keeps the node on 127.0.0.1, where every Ray server binds to loopback only
    (tests/test_ray_security.py lists the sockets). Ray reads the switch once, when imported, so the
    value it read is set here."""
    from ray._private import ray_constants

    previous = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    return previous


def restore_binding(previous: bool) -> None:
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = previous


# ---- the address of a cluster ---------------------------------------------------------------------
def _host_port(address: str) -> tuple[str, int]:
    rest, default_port = address, None
    if address.startswith("ray://"):
        rest, default_port = address.removeprefix("ray://"), RAY_CLIENT_PORT
    elif "://" in address:
        raise RayAddressError(f"Ray address {address!r}: expected HOST:PORT (the head's GCS) or ray://HOST:PORT")
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep:
        host, port = rest, str(default_port or "")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise RayAddressError(f"Ray address {address!r}: expected HOST:PORT (the head's GCS) or ray://HOST:PORT")
    return host, int(port)


def is_loopback_address(address: str) -> bool:
    return _host_port(address)[0] in LOOPBACK_HOSTS


def check_ray_address(address: str) -> None:
    """Fails at once, naming `address`, when nothing listens there (Ray itself retries for a minute)."""
    if address in ("auto", "local"):
        return
    host, port = _host_port(address)
    try:
        socket.create_connection((host, port), timeout=ADDRESS_TIMEOUT_S).close()
    except OSError as err:
        raise RayAddressError(f"no Ray cluster answers at {address} ({err.strerror or err}); check --address "
                              "(or RAY_ADDRESS) and that the cluster's head is running") from None


# ---- what every worker process gets ---------------------------------------------------------------
def ship_code() -> bool:
    """False when GREC_SHIP_CODE says the cluster's image already has grec's packages."""
    return os.environ.get(SHIP_CODE_ENV, "1").strip().lower() not in ("0", "false", "no")


def code_runtime_env() -> dict[str, Any]:
    """`py_modules` with grec's package folders (caches left out): Ray uploads them once per job and
    puts them on every worker's path, on nodes whose environment has no grec."""
    folders = []
    for name in GREC_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise RuntimeError(f"cannot ship package {name!r} to the cluster: it is not importable here")
        folders.append(str(Path(next(iter(spec.submodule_search_locations)))))
    return {"py_modules": folders, "excludes": list(SHIPPED_CODE_EXCLUDES)}


def setup_hook(levels: Mapping[str, int], ray_file_levels: Mapping[str, int] | None = None,
               ignored_warnings: Sequence[str] = ()) -> Callable[[], None]:
    """A worker setup hook that sets loggers' levels: `levels` by name, `ray_file_levels` by source
    file in the worker's `ray` package, and ignores warnings whose message matches `ignored_warnings`.
    It is a closure, so Ray pickles it by value: a worker runs it without importing grec (which a
    node may only get from the runtime environment)."""
    levels, ray_file_levels, ignored_warnings = dict(levels), dict(ray_file_levels or {}), tuple(ignored_warnings)

    def set_logger_levels() -> None:
        import warnings

        import ray

        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for relative, level in ray_file_levels.items():
            logging.getLogger(os.path.join(os.path.dirname(ray.__file__), relative)).setLevel(level)
        for message in ignored_warnings:
            warnings.filterwarnings("ignore", message=message)

    return set_logger_levels


def quiet_hook() -> Callable[[], None]:
    """The setup hook that quiets the libraries (QUIET_LOGGERS, ...); with `-v` one that changes nothing."""
    if verbose():
        return setup_hook({})
    return setup_hook(QUIET_LOGGERS, QUIET_RAY_FILE_LOGGERS, QUIET_WARNINGS)


def job_runtime_env(*, local: bool, ship: bool) -> dict[str, Any]:
    """The job's runtime environment: shared variables (the driver's local paths only to a local Ray)
    and the logging hook; on a cluster (unless its image has them, `ship` False) grec's packages."""
    runtime_env: dict[str, Any] = {"env_vars": worker_env(local=local), "worker_process_setup_hook": quiet_hook()}
    if ship and not local:
        runtime_env.update(code_runtime_env())
    return runtime_env


# ---- starting and joining -------------------------------------------------------------------------
def start_local_ray(*, num_cpus: int | None = None, object_store_memory: int | None = None,
                    runtime_env: dict[str, Any] | None = None, grec_dir: str | Path | None = None,
                    log_to_driver: bool | None = None) -> None:
    """`ray.init` of a local Ray on loopback with token auth (see the module docstring).
    `log_to_driver` (default: only with `-v`) prints the output of Ray's processes here; otherwise
    it stays in Ray's log files, whose folder is logged."""
    import ray

    use_local_token_auth(grec_dir)
    use_loopback()
    # Ray announces at WARNING that it turned token auth on: that is grec's default, not news.
    logging.getLogger(RAY_AUTH_SETUP_LOGGER).setLevel(logging.ERROR)
    if DS_ACCELERATOR_ENV not in os.environ and not _has_cuda():
        os.environ[DS_ACCELERATOR_ENV] = "cpu"  # before Ray starts: its processes inherit it
    # address="local": a new Ray, never one that `ray start` left running on this machine
    context = ray.init(address="local", num_cpus=num_cpus, object_store_memory=object_store_memory,
                       include_dashboard=False,
                       runtime_env=runtime_env if runtime_env is not None else job_runtime_env(local=True, ship=False),
                       log_to_driver=verbose() if log_to_driver is None else log_to_driver,
                       logging_level=logging.WARNING)  # grec says that it started Ray; Ray's own line repeats it
    if not (verbose() if log_to_driver is None else log_to_driver):
        logger.info("Ray's processes log to %s (-v shows their output here)",
                    Path(context.address_info["session_dir"]) / "logs")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def join_cluster(address: str, runtime_env: dict[str, Any] | None = None) -> None:
    """`ray.init(address)` with the cluster's auth; a clear error when it does not answer or refuses."""
    import ray
    from ray.exceptions import AuthenticationError

    check_ray_address(address)
    if is_loopback_address(address):
        use_loopback()  # else Ray would rewrite 127.0.0.1 to the external address, where nothing listens
    if runtime_env and "py_modules" in runtime_env:
        logger.info("shipping %s to the cluster's nodes (%s=0 if its image has them)",
                    ", ".join(Path(p).name for p in runtime_env["py_modules"]), SHIP_CODE_ENV)
        # Ray logs three lines per package it uploads; the one line above says it.
        logging.getLogger(RAY_PACKAGING_LOGGER).setLevel(logging.WARNING)
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    except AuthenticationError as err:
        raise RayAddressError(f"the Ray cluster at {address} refused this client: {err} (give the cluster's "
                              f"token with {TOKEN_ENV} or {TOKEN_PATH_ENV}, and {AUTH_MODE_ENV}=token)") from None
    except ConnectionError as err:
        raise RayAddressError(f"cannot join the Ray cluster at {address}: {err} (a cluster with token auth needs "
                              f"its token: {AUTH_MODE_ENV}=token with {TOKEN_ENV} or {TOKEN_PATH_ENV})") from None


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                object_store_memory: int | None = None) -> Iterator[None]:
    """Ray for the duration of the block. `address` (else $RAY_ADDRESS) joins that cluster; without
    one a local Ray starts with `num_cpus` (default: all) and a bounded object store."""
    import ray

    if ray.is_initialized():
        yield
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address == "local":
        address = None
    from ray._private import ray_constants

    binding = ray_constants.ENABLE_RAY_CLUSTER
    if address:
        logger.info("joining the Ray cluster at %s", address)
        join_cluster(address, job_runtime_env(local=False, ship=ship_code()))
    else:
        store = object_store_memory or local_object_store_bytes()
        logger.info("starting a local Ray on 127.0.0.1 (%s CPUs, object store %.0f MiB, token auth)",
                    num_cpus or "all", store / 2**20)
        start_local_ray(num_cpus=num_cpus, object_store_memory=store)
    # The driver runs Ray Data's executor too (evaluate, predict, build-index): without a terminal
    # it logs a progress summary every few seconds and each dataset's plan; quiet it as the workers.
    quiet_hook()()
    if not verbose():
        setup_hook(QUIET_DRIVER_LOGGERS)()
    try:
        yield
    finally:
        ray.shutdown()
        restore_binding(binding)


# ---- what a job leaves behind ---------------------------------------------------------------------
def release_orphaned_placement_groups(*, wait_s: float = 0.0) -> int:
    """Removes this job's placement groups whose creating actor has died, returns how many. With
    `wait_s`, first waits up to that long for the actors that created the job's other placement
    groups to end (a search whose trials were just stopped).

    A Ray Train run whose controller dies with its caller (a `grec tune` trial that Tune stops takes
    its controller with it) leaves its worker group's placement group reserved until the job ends,
    and later trials wait for those CPUs forever. Train's own cleaner would remove it, but it asks the
    state API, which needs the dashboard: ~950 MiB and 11 more processes on a local Ray, which grec
    does not start. Ray's public placement-group table omits the creator, hence its protobuf."""
    import ray
    from ray._private.state import state as global_state
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    job = ray.get_runtime_context().get_job_id()
    deadline = time.monotonic() + wait_s
    while True:
        created_by_actors = [info for info in map(PlacementGroupTableData.FromString,
                                                  global_state._connect_and_get_accessor().get_placement_group_table())
                             if info.creator_job_id.hex() == job and not info.is_detached
                             and not ray.ActorID(info.creator_actor_id).is_nil()  # nil: the driver made it
                             and info.state != PlacementGroupTableData.REMOVED]
        if all(info.creator_actor_dead for info in created_by_actors) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    orphaned = [info for info in created_by_actors if info.creator_actor_dead]
    for info in orphaned:
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(info.placement_group_id)))
    return len(orphaned)
