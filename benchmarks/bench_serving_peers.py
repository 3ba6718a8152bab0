"""The endpoint against what a user would run instead, one command, one run (issue 31, part 5).

Arms, all on one registered version and the same requests:
- **grec serve**: `serving.app.build_app` with the default serving config (SQLite online store) on a
  fresh local Ray as grec starts one (loopback, token auth, 2 CPUs), in a child process;
  `POST /v1/recommend` with `--candidates` given items, k 10, task `like`.
- **mlflow models serve**: MLflow's scoring server on the version's registered pyfunc (`--env-manager
  local`, its default one worker), `POST /invocations` with the same request's rows: the raw rows
  grec's scorer builds for that user and those candidates from the same online store (so MLflow is
  spared the store lookup), scoring the same task (`params: {tasks: [like]}`).
- **in process** (this process, one torch thread, CPU time, medians): grec's serving functions for
  one request and per request inside a batch of 16 (store lookup, rows, forward); the pyfunc's
  `predict` (as `mlflow.pyfunc.load_model` loads it) for one request's rows.

The two servers alternate within and across `--rounds`, so that the machine's other load falls on
both alike. Per server and concurrency (`--concurrency`, default 1 8 32 128): closed-loop clients,
at most `--requests` answers or `--time-cap` s; answers by status, requests/s, p50/p99 of the
answered requests, errors (5xx other than 503, transport errors), and the CPU of the server's
processes per answered request by role (psutil: Ray's proxy, ingress and scorer replicas, Serve's
controller, Ray's own processes; MLflow's server and its worker).

    .venv/bin/python benchmarks/bench_serving_peers.py --out docs/benchmarks/serving_peers_results.json \\
        --page docs/benchmarks/serving_peers.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script from any directory
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_serve_modes import load_levels, served_endpoint, set_up_champion  # noqa: E402
from bench_serving_load import MODEL_NAME, TASK, _free_port, _in_process_ms, add_load_options  # noqa: E402
from page_parts import machine_facts, machine_line, statuses_cell  # noqa: E402

SERVERS = ("grec serve", "mlflow models serve")
BATCH = 16  # the scorer's default @serve.batch size
MLFLOW_START_TIMEOUT_S = 180


def _mlflow_payloads(set_up: dict) -> list[dict]:
    """Each grec request as MLflow's scoring server takes it: the rows grec's scorer would build."""
    from feature_store.online import open_online_store
    from registry.models import feature_columns, load_registered
    from registry.tracking import use_tracking_uri
    from serving.features import RowsQuery, StoreGuard, request_rows

    with use_tracking_uri(set_up["tracking_uri"]):
        loaded = load_registered(f"models:/{MODEL_NAME}/1")
    columns = feature_columns(loaded.spec)  # the pyfunc signature's inputs (MLflow warns at every other column)
    guard = StoreGuard(open_online_store(set_up["online_store"]), "degrade", 1.0)
    bodies = []
    for payload in set_up["payloads"]:
        rows = request_rows(guard, loaded.definition, RowsQuery(payload["user_id"], payload["candidates"])).rows
        rows = rows.select(columns)
        # pandas' JSON writer turns numpy scalars and array cells into plain JSON
        frame = json.loads(rows.to_pandas().to_json(orient="split", index=False))
        bodies.append({"dataframe_split": frame, "params": {"tasks": [TASK]}})
    guard.store.close()
    return bodies


def _in_process(set_up: dict, mlflow_payloads: list[dict]) -> dict:
    """CPU ms, medians, of grec's serving functions and of the pyfunc on the same requests."""
    import mlflow.pyfunc
    import pandas as pd
    import torch

    from feature_store.online import open_online_store
    from registry.tracking import use_tracking_uri
    from serving.config import ServingConfig
    from serving.features import StoreGuard
    from serving.model_source import load_servable

    torch.set_num_threads(1)  # as the replicas run it
    config = ServingConfig(model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=set_up["tracking_uri"],
                           online_store=set_up["online_store"])
    servable = load_servable(config, "1")
    guard = StoreGuard(open_online_store(set_up["online_store"]), "degrade", 1.0)
    payloads = set_up["payloads"]
    _in_process_ms(servable, guard, servable.definition, payloads, 1, 5)  # warm-up
    one = _in_process_ms(servable, guard, servable.definition, payloads, 1, 40, clock=time.process_time)
    batch = _in_process_ms(servable, guard, servable.definition, payloads, BATCH, 6, clock=time.process_time)
    guard.store.close()
    with use_tracking_uri(set_up["tracking_uri"]):
        pyfunc = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1")
    frames = [pd.DataFrame(**body["dataframe_split"]) for body in mlflow_payloads]
    times = []
    for index in range(45):
        started = time.process_time()
        pyfunc.predict(frames[index % len(frames)], params={"tasks": [TASK]})
        times.append(time.process_time() - started)
    return {"grec_1_request_cpu_ms": round(one, 2), "grec_per_request_in_batch_of_16_cpu_ms": round(batch / BATCH, 2),
            "pyfunc_1_request_cpu_ms": round(1000 * statistics.median(times[5:]), 2)}


def _mlflow_levels(set_up: dict, payloads: list[dict], args: argparse.Namespace) -> list[dict]:
    """`mlflow models serve` on version 1 of the set-up's model, under the load levels."""
    port = _free_port()
    scripts = Path(sys.executable).parent  # mlflow starts `uvicorn` from the PATH
    env = {**os.environ, "MLFLOW_TRACKING_URI": set_up["tracking_uri"],
           "PATH": os.pathsep.join([str(scripts), os.environ.get("PATH", "")])}
    command = [str(scripts / "mlflow"), "models", "serve", "-m", f"models:/{MODEL_NAME}/1",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    with tempfile.TemporaryDirectory() as work:
        log = Path(work) / "server.log"  # a file, not a pipe: a full pipe would stall the server
        with log.open("w") as out:
            server = subprocess.Popen(command, env=env, cwd=work, stdout=out, stderr=subprocess.STDOUT)
        try:
            base_url = f"http://127.0.0.1:{port}"
            _wait_until_up(server, f"{base_url}/ping", log)
            return list(load_levels(base_url, {}, payloads, args.concurrency, args.time_cap, args.requests,
                                    path="/invocations", server=server.pid))
        finally:
            server.terminate()
            server.wait(timeout=60)


def _wait_until_up(server: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + MLFLOW_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow models serve exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow models serve did not answer {url} within {MLFLOW_START_TIMEOUT_S} s")


def _grec_child(set_up: dict, args: argparse.Namespace) -> None:
    """grec serve on a fresh local Ray (this child process): one JSON line per level."""
    with served_endpoint(set_up) as (base_url, headers):
        for level in load_levels(base_url, headers, set_up["payloads"], args.concurrency, args.time_cap,
                                 args.requests):
            print(json.dumps({"server": "grec serve", **level}), flush=True)


def _grec_levels(set_up_file: Path, args: argparse.Namespace) -> list[dict]:
    command = [sys.executable, __file__, "--child", "--set-up", str(set_up_file), "--requests", str(args.requests),
               "--time-cap", str(args.time_cap), "--concurrency", *map(str, args.concurrency)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        return [{"server": "grec serve", "failed": done.returncode, "stderr": done.stderr[-3000:]}]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"server"')]


def _median(runs: list[dict], server: str, clients: int, key: str) -> float | None:
    values = [r[key] for r in runs if r.get("server") == server and r.get("concurrency") == clients
              and r.get(key) is not None]
    return statistics.median(values) if values else None


def _page(report: dict, command: str) -> str:
    s, floor = report["settings"], report["in_process"]
    lines = [
        "# Serving: grec serve against mlflow models serve and the in-process floor (issue 31, part 5)", "",
        "```", command, "```", "",
        f"Commit `{report['commit']}`. What runs: MovieLens-100K ({s['events']:,} events) prepared and "
        f"materialized into a SQLite online store; a GRec with default widths (tiny BERT text head) trained for "
        f"{s['train_steps']} steps and registered as `champion` (version 1). Both servers serve version 1 and "
        f"answer the same {s['requests']} requests: `grec serve` ranks {s['candidates']} given candidates for a "
        "known user (`POST /v1/recommend`, k 10, task `like`, default serving config: ingress and 2 scorer "
        "replicas on a local Ray of 2 CPUs); `mlflow models serve` (local environment, its default one worker) "
        "scores the same request's raw rows, as grec's scorer builds them from the same online store, for the "
        f"same task (`POST /invocations`). {s['rounds']} rounds, the servers alternating; closed-loop clients, at "
        f"most {s['requests']} answers or {s['time_cap']:g} s per level. Server CPU: user + system time of the "
        "server's processes (psutil) per answered request.", "",
        f"{machine_line(report['machine'])} Read the figures as a comparison within a round.", "",
        "In process (one torch thread, CPU ms, medians over the rounds): grec's serving functions "
        f"{floor['grec_1_request_cpu_ms']} for one request, {floor['grec_per_request_in_batch_of_16_cpu_ms']} per "
        f"request in a batch of 16; the registered pyfunc {floor['pyfunc_1_request_cpu_ms']} for one request's "
        "rows.", "",
        "| round | server | concurrency | answers | requests/s | p50 ms | p99 ms | server CPU ms / answer | by role |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        if "failed" in run:
            lines.append(f"| {run['round']} | {run['server']} | failed ({run['failed']}) | | | | | | |")
            continue
        statuses = statuses_cell(run["statuses"])
        roles = ", ".join(f"{role} {ms}" for role, ms in (run["server_cpu_ms_per_answer_by_role"] or {}).items())
        lines.append(f"| {run['round']} | {run['server']} | {run['concurrency']} | {statuses} | "
                     f"{run['throughput_ok_rps']} | {run['ok_p50_ms']} | {run['ok_p99_ms']} | "
                     f"{run['server_cpu_ms_per_answer']} | {roles} |")
    lines += ["", "Medians over the rounds:", "",
              "| concurrency | requests/s grec | mlflow | grec / mlflow | p50 ms grec | mlflow | "
              "CPU ms / answer grec | mlflow |", "|---|---|---|---|---|---|---|---|"]
    for clients in s["concurrency"]:
        rps = [_median(report["runs"], server, clients, "throughput_ok_rps") for server in SERVERS]
        p50 = [_median(report["runs"], server, clients, "ok_p50_ms") for server in SERVERS]
        cpu = [_median(report["runs"], server, clients, "server_cpu_ms_per_answer") for server in SERVERS]
        ratio = f"{rps[0] / rps[1]:.2f}" if rps[0] and rps[1] else "-"
        cells = [f"{v:.1f}" if v is not None else "-" for v in (rps[0], rps[1])] + [ratio] + \
                [f"{v:.1f}" if v is not None else "-" for v in (*p50, *cpu)]
        lines.append(f"| {clients} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(parser, concurrency=[1, 8, 32, 128], requests=300, time_cap=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both servers, interleaved (default 2)")
    parser.add_argument("--page", type=Path, help="write the markdown page here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--set-up", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _grec_child(json.loads(args.set_up.read_text()), args)
        return

    runs: list[dict] = []
    floors: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        set_up = set_up_champion(root, args.events, args.train_steps, args.candidates, args.requests)
        set_up_file = root / "set_up.json"
        set_up_file.write_text(json.dumps(set_up))
        mlflow_payloads = _mlflow_payloads(set_up)
        for round_index in range(args.rounds):
            floors.append(_in_process(set_up, mlflow_payloads))
            print(json.dumps(floors[-1]), flush=True)
            for server in SERVERS if round_index % 2 == 0 else SERVERS[::-1]:
                levels = _grec_levels(set_up_file, args) if server == "grec serve" else \
                    [{"server": server, **level} for level in _mlflow_levels(set_up, mlflow_payloads, args)]
                runs += [{"round": round_index, **level} for level in levels]
                print(json.dumps(levels), flush=True)
    commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    report = {
        "commit": commit,
        "machine": machine_facts(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("child", "set_up")},
        "in_process": {key: round(statistics.median(f[key] for f in floors), 2) for key in floors[0]},
        "in_process_rounds": floors,
        "runs": runs,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.page:
        command = ".venv/bin/python benchmarks/bench_serving_peers.py " + shlex.join(sys.argv[1:])
        args.page.write_text(_page(report, command))


if __name__ == "__main__":
    main()
