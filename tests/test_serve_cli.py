"""`grec serve` as a user runs it: its own local Ray, Serve's throughput-optimized mode when the
serving config asks for it, answers over HTTP, and a clean stop on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from conftest import free_loopback_port

START_TIMEOUT_S = 240


@pytest.mark.slow
def test_grec_serve_in_throughput_optimized_mode_answers_through_haproxy_and_stops_on_ctrl_c(serving_app, tmp_path):
    port = free_loopback_port()
    config = tmp_path / "serve.yaml"
    config.write_text("throughput_optimized: true\nscorer: {num_replicas: 1}\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # HAProxy's stats and metrics ports are Serve's fixed defaults unless set: free ones, so that
    # nothing else on the machine is in the way.
    env.update(GREC_API_TOKEN=serving_app.token, RAY_SERVE_HAPROXY_STATS_PORT=str(free_loopback_port()),
               RAY_SERVE_HAPROXY_METRICS_PORT=str(free_loopback_port()))
    grec = str(Path(sys.executable).parent / "grec")
    process = subprocess.Popen(
        [grec, "serve", "--model", f"models:/{serving_app.model_name}@champion", "--tracking-uri",
         serving_app.tracking_uri, "--online-store", serving_app.online_store, "--port", str(port),
         "--config", str(config)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        started = _wait_for_line(process, f"on http://127.0.0.1:{port}")
        assert "throughput-optimized mode" in started and "bind every interface" in started
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60,
                          headers={"Authorization": f"Bearer {serving_app.token}"}) as client:
            response = _first_answer(client, {"user_id": serving_app.known_user, "task": "like",
                                              "candidates": serving_app.known_items[:20], "k": 5})
            assert response.status_code == 200, response.text
            assert len(response.json()["items"]) == 5
            assert client.post("/v1/recommend", json={"user_id": 1}, headers={"Authorization": "Bearer no"}
                               ).status_code == 401
        # HAProxy, not Serve's Python proxy, holds the endpoint's port
        holders = {conn.pid for conn in psutil.net_connections("tcp")
                   if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN}
        assert any("haproxy" in psutil.Process(pid).name() for pid in holders if pid), holders
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _wait_for_line(process: subprocess.Popen, marker: str) -> str:
    """Everything the process printed up to the line holding `marker`."""
    seen: list[str] = []
    deadline = time.monotonic() + START_TIMEOUT_S
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
        assert time.monotonic() < deadline, "".join(seen)
    raise AssertionError(f"grec serve exited with {process.wait()} before it served:\n{''.join(seen)}")


def _first_answer(client: httpx.Client, payload: dict) -> httpx.Response:
    """The first answer that is not a 503 while the scorer loads its model."""
    deadline = time.monotonic() + 120
    while True:
        response = client.post("/v1/recommend", json=payload)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.5)
