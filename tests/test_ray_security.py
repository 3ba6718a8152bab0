"""A Ray that grec starts is closed: its processes listen on loopback (Serve's replicas, which Ray
binds to every interface, refuse calls without the token), Ray's token auth is on with a private
token in the grec directory, and a client without the token is refused.
Joining a cluster fails fast, naming the address, when nothing answers there; a cluster run needs
checkpoint storage every node sees."""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path

import psutil
import pytest

from conftest import free_loopback_port

pytestmark = pytest.mark.slow


def _listening_sockets(root_pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every TCP socket a process of `root_pid`'s tree listens on."""
    tree = {root_pid} | {p.pid for p in psutil.Process(root_pid).children(recursive=True)}
    found = []
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.pid in tree:
            try:
                name = psutil.Process(conn.pid).name()
            except psutil.NoSuchProcess:
                continue
            found.append((name, conn.laddr.ip, conn.laddr.port))
    return found


def _is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def _grpc_status(address: str, method: str, token: str | None):
    """The status code of one gRPC call with an empty request (OK when it succeeds)."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        try:
            call(b"", timeout=10, metadata=metadata)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def test_every_ray_socket_is_on_loopback_or_needs_the_token(ray_local, serving_app):
    """The session's Ray, started as grec starts one, with the Serve application running on it."""
    import grpc

    sockets = _listening_sockets(os.getpid())
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets
    serve_port = int(serving_app.base_url.rsplit(":", 1)[1])
    assert serve_port in {port for _, _, port in sockets}
    exposed = [s for s in sockets if not _is_loopback(s[1])]
    # Ray 2.60's Serve replicas serve calls between deployments on every interface (the address is
    # hard-coded); Ray's token interceptor guards that server. (Asked on loopback: same server.)
    assert all(name.startswith("ray::ServeReplica:") for name, _, _ in exposed), exposed
    token = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    for _, _, port in exposed:
        address, method = f"127.0.0.1:{port}", "/ray.serve.ASGIService/HandleRequest"
        assert _grpc_status(address, method, None) == grpc.StatusCode.UNAUTHENTICATED
        assert _grpc_status(address, method, "0" * 64) == grpc.StatusCode.UNAUTHENTICATED
        assert _grpc_status(address, method, token) != grpc.StatusCode.UNAUTHENTICATED


def _gcs_call(gcs_address: str, token: str | None):
    import grpc
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    with grpc.insecure_channel(gcs_address) as channel:
        stub = gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel)
        metadata = [("authorization", f"Bearer {token}")] if token else None
        return stub.GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=10, metadata=metadata)


def test_ray_refuses_a_client_without_the_token(ray_local):
    import grpc
    import ray

    assert os.environ["RAY_AUTH_MODE"] == "token"
    token_file = Path(os.environ["RAY_AUTH_TOKEN_PATH"])
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    gcs = ray.get_runtime_context().gcs_address
    for token in (None, "0" * 64):
        with pytest.raises(grpc.RpcError) as refused:
            _gcs_call(gcs, token)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(_gcs_call(gcs, token_file.read_text().strip()).node_info_list) >= 1


def test_token_is_generated_once_private_and_kept(tmp_path):
    from jobs.ray_runtime import ray_token_path

    path = ray_token_path(tmp_path / ".grec")
    token = path.read_text()
    assert len(token) == 64 and int(token, 16) >= 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    assert ray_token_path(tmp_path / ".grec") == path and path.read_text() == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["ray_auth_token"]


def test_an_address_where_nothing_answers_fails_fast_naming_it(train_tiny_config, tiny_movielens, tmp_path):
    import ray

    from jobs.ray_runtime import RayAddressError, check_ray_address
    from jobs.train import ConfigError, run_training

    address = f"127.0.0.1:{free_loopback_port()}"
    with pytest.raises(RayAddressError, match=f"no Ray cluster answers at {address}"):
        check_ray_address(address)
    with pytest.raises(RayAddressError, match="expected HOST:PORT"):
        check_ray_address("http://head:6379")
    config = train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path}/m.db", scaling={"address": address})
    running = ray.is_initialized()
    with pytest.raises(ConfigError, match=f"scaling.address: no Ray cluster answers at {address}"):
        run_training(config, show_progress=False)
    assert ray.is_initialized() == running


def test_a_cluster_run_needs_storage_every_node_sees(train_tiny_config, tiny_movielens, tmp_path):
    from jobs.train import ConfigError
    from jobs.train.config import check_storage

    config = train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path}/m.db", scaling={"address": "head:6379"})
    check_storage(config)  # an absolute path (a shared file system) is accepted
    unset = config.model_copy(update={"scaling": config.scaling.model_copy(update={"storage_path": None})})
    with pytest.raises(ConfigError, match="scaling.storage_path: a run on the Ray cluster at head:6379 needs "
                                          "checkpoint storage every node sees"):
        check_storage(unset)
    relative = config.model_copy(update={"scaling": config.scaling.model_copy(update={"storage_path": "runs"})})
    with pytest.raises(ConfigError, match="scaling.storage_path: 'runs' is relative"):
        check_storage(relative)
    local = unset.model_copy(update={"scaling": unset.scaling.model_copy(update={"address": None})})
    check_storage(local)  # a local Ray keeps its default


def test_code_is_shipped_unless_the_image_has_it(monkeypatch):
    from jobs.ray_runtime import GREC_PACKAGES, job_runtime_env

    monkeypatch.delenv("GREC_SHIP_CODE", raising=False)
    from jobs.ray_runtime import ship_code

    shipped = job_runtime_env(local=False, ship=ship_code())
    assert sorted(Path(p).name for p in shipped["py_modules"]) == sorted(GREC_PACKAGES)
    assert all((Path(p) / "__init__.py").is_file() for p in shipped["py_modules"])
    assert "__pycache__" in shipped["excludes"]
    monkeypatch.setenv("GREC_SHIP_CODE", "0")
    assert "py_modules" not in job_runtime_env(local=False, ship=ship_code())
    assert "py_modules" not in job_runtime_env(local=True, ship=True)  # local workers share this environment


def test_a_cluster_gets_none_of_the_drivers_local_paths(monkeypatch):
    """TORCH_EXTENSIONS_DIR names this machine's prebuilt DeepSpeed ops: a local Ray's workers use
    them, a cluster's nodes keep their own (their image's prebuilt ops or their own cache)."""
    from jobs.ray_runtime import job_runtime_env

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "driver-cache/torch_extensions")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local = job_runtime_env(local=True, ship=False)["env_vars"]
    assert local["TORCH_EXTENSIONS_DIR"] == "driver-cache/torch_extensions"
    joined = job_runtime_env(local=False, ship=False)["env_vars"]
    assert "TORCH_EXTENSIONS_DIR" not in joined and joined["HF_HUB_OFFLINE"] == "1"
