"""The recommendation endpoint under load, faults and a schema fuzzer, over loopback (issues 5 and 12).

One Serve application with the default serving config (2 scorer replicas, bounded queues, Redis
online store) on a local Ray started as grec starts one, then, in order:

1. Load levels (`--concurrency`, default 8 32 128): well-behaved clients (each waits Retry-After
   after a 503) send POST /v1/recommend with `--candidates` items for a random known user, a fixed
   number of requests per level within a time cap. Per level: answers by status, p50/p95/p99 of
   the admitted (200) requests and of the 503s, throughput, the mean batch of the scorer's forward (from /metrics).
   Baseline, same process and run, timed right before each level: the in-process path for the same
   work (online lookup, transforms, per-task forward: `serving.ranking.rank_batch`, the scorer's own
   function) for 1 request and for a batch of as many requests as the scorer groups.
2. A scorer replica killed (`ray.kill`) under load at `--fault-concurrency`: failed requests, 503s,
   timeouts, seconds from the first to the last 503, and seconds from the kill until every answer
   is a 200 again.
3. Redis stopped for `--redis-outage` seconds under load (saved and restarted with its data):
   answers by status and how many said `features_degraded`.
4. schemathesis against /openapi.json (`--fuzz-examples` per operation, all checks).

Set-up, all in temporary directories: MovieLens-100K (--events events) prepared and materialized
into a redis-server on 127.0.0.1 (needs the redis-server binary); a GRec with default widths (tiny
BERT text head) trained for a few steps, registered as champion in an MLflow SQLite store.

    .venv/bin/python benchmarks/bench_serving_load.py --out docs/benchmarks/serving_results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT))

# Replicas report metrics every second (Ray's default: 10 s), so each level's batch sizes are read
# right after it; set before Ray starts.
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import redis  # noqa: E402
import torch  # noqa: E402

from feature_store.online import materialize, open_online_store  # noqa: E402
from feature_store.prepare import PreparedDataset, prepare_dataset  # noqa: E402
from feature_store.sources import SourceOptions  # noqa: E402
from grec import GRecConfig, InputSpec, TextEncoderConfig, build_model  # noqa: E402
from jobs.train.in_process import train_steps  # noqa: E402
from serving.config import BatchingConfig, ServingConfig  # noqa: E402
from serving.features import RowsQuery, StoreGuard, request_rows  # noqa: E402
from serving.model_source import load_servable  # noqa: E402
from serving.ranking import RankRequest, rank_batch  # noqa: E402

MODEL_NAME = "grec-bench"
APP_NAME = "grec-bench"
TASK = "like"
CLIENT_TIMEOUT_S = 30.0


def _percentile(values: list[float], q: float) -> float | None:
    return round(1000 * float(np.percentile(np.asarray(values), q)), 2) if values else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(prepared: PreparedDataset, steps: int):
    config = GRecConfig(input=InputSpec.from_json(prepared.spec_path), text=TextEncoderConfig(backbone="tiny_bert"))
    columns = prepared.transforms().transform(prepared.read_split("train"))
    return train_steps(build_model(config), columns, steps=steps, batch_size=256, lr=1e-3, seed=0)


def register_champion(prepared: PreparedDataset, root: Path, steps: int) -> str:
    """A GRec trained for `steps` steps on `prepared`, registered as champion of MODEL_NAME in an MLflow
    SQLite store under `root`; returns the store's URI."""
    from registry.models import register_model
    from registry.tracking import use_tracking_uri

    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    with use_tracking_uri(tracking_uri):
        register_model(_train(prepared, steps), prepared.root, MODEL_NAME,
                       prepared.read_split("train").slice(0, 3).to_pandas(), alias="champion")
    return tracking_uri


def recommend_payloads(prepared: PreparedDataset, candidates: int, requests: int) -> list[dict]:
    """`requests` POST /v1/recommend bodies, seeded: a known user and `candidates` known items each."""
    train = prepared.read_split("train", columns=["user_id", "item_id"])
    users, items = np.unique(train.column("user_id").to_numpy()), np.unique(train.column("item_id").to_numpy())
    rng = np.random.default_rng(0)
    return [{"user_id": int(rng.choice(users)), "task": TASK, "k": 10,
             "candidates": rng.choice(items, candidates, replace=False).tolist()} for _ in range(requests)]


def add_load_options(parser: argparse.ArgumentParser, concurrency: list[int], requests: int, time_cap: float) -> None:
    """The options of a serving benchmark's set-up, load levels and results (defaults per benchmark)."""
    parser.add_argument("--events", type=int, default=20_000, help="MovieLens events to prepare (default 20000)")
    parser.add_argument("--candidates", type=int, default=100, help="items ranked per request (default 100)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=concurrency)
    parser.add_argument("--requests", type=int, default=requests, help=f"answers per level at most (default {requests})")
    parser.add_argument("--time-cap", type=float, default=time_cap, help=f"seconds per level at most (default {time_cap:g})")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")


class BenchRedis:
    """redis-server on 127.0.0.1 that keeps its data across a stop (SAVE, then reload at start)."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("bench_serving_load: needs the redis-server binary (apt-get install redis-server)")
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._command = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(directory),
                         "--dbfilename", "bench.rdb", "--save", "", "--appendonly", "no"]
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        self._process = subprocess.Popen(self._command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self, save: bool = True) -> None:
        if save:
            redis.Redis(host="127.0.0.1", port=self.port).save()
        self._process.terminate()
        self._process.wait(timeout=10)


class Recorder:
    """Every answer of a load run: (sent at, seconds, status or error name, response kind/flag)."""

    def __init__(self) -> None:
        self.answers: list[tuple[float, float, str, str | None, bool]] = []

    def summary(self, started: float, elapsed: float) -> dict:
        statuses: dict[str, int] = {}
        for _, _, status, _, _ in self.answers:
            statuses[status] = statuses.get(status, 0) + 1
        ok = [s for _, s, status, _, _ in self.answers if status == "200"]
        refused = [s for _, s, status, _, _ in self.answers if status == "503"]
        return {
            "answers": len(self.answers), "statuses": statuses, "seconds": round(elapsed, 2),
            "throughput_ok_rps": round(len(ok) / elapsed, 2),
            "ok_p50_ms": _percentile(ok, 50), "ok_p95_ms": _percentile(ok, 95), "ok_p99_ms": _percentile(ok, 99),
            "p99_over_p50": round(float(np.percentile(ok, 99) / np.percentile(ok, 50)), 2) if ok else None,
            "refused_p50_ms": _percentile(refused, 50), "refused_p99_ms": _percentile(refused, 99),
            "server_errors_other_than_503": sum(n for s, n in statuses.items() if s.startswith("5") and s != "503"),
            "features_degraded": sum(1 for *_, degraded in self.answers if degraded),
        }


async def _load(base_url: str, headers: dict, payloads: list[dict], concurrency: int, duration_s: float,
                max_requests: int | None, recorder: Recorder, events: list | None = None,
                path: str = "/v1/recommend") -> tuple[float, float]:
    """Closed-loop clients: each POSTs a payload to `path`, waits for the answer, honours Retry-After
    after a 503. Stops after `max_requests` answers or `duration_s`; `events` are (at seconds,
    coroutine factory) run during the load. Returns (start, elapsed).

    aiohttp, not httpx: at 128 clients httpx's connection pool cost this process 6-7 ms of CPU per
    request (aiohttp 0.3), as much as the server on the same cores, and against a server that
    answers at once it measured a p50 of 114 ms (aiohttp 15) (docs/benchmarks/refusals.md)."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT_S)
    started = time.perf_counter()
    sent = 0
    async with aiohttp.ClientSession(base_url, headers=headers, connector=connector, timeout=timeout) as client:
        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() - started < duration_s and (max_requests is None or sent < max_requests):
                payload = payloads[sent % len(payloads)]
                sent += 1
                at = time.perf_counter()
                try:
                    async with client.post(path, json=payload) as response:
                        body = await response.json() if response.content_type == "application/json" else {}
                except (aiohttp.ClientError, TimeoutError) as err:
                    recorder.answers.append((at - started, time.perf_counter() - at, type(err).__name__, None, False))
                    continue
                seconds = time.perf_counter() - at
                kind = body.get("error", {}).get("kind") if "error" in body else None
                recorder.answers.append((at - started, seconds, str(response.status), kind,
                                         bool(body.get("features_degraded"))))
                if response.status == 503:
                    await asyncio.sleep(min(1.0, float(response.headers.get("Retry-After", 1))))

        async def scheduled() -> None:
            for at, action in events or []:
                await asyncio.sleep(max(0.0, at - (time.perf_counter() - started)))
                await action()

        await asyncio.gather(scheduled(), *(worker() for _ in range(concurrency)))
    return started, time.perf_counter() - started


def _in_process_ms(servable, guard, definition, payloads: list[dict], batch: int, repeats: int,
                   clock=time.perf_counter) -> float:
    """Median time (by `clock`: wall, or time.process_time for CPU) of lookup + transforms + forward
    for `batch` requests ranked together."""
    times = []
    for r in range(repeats):
        group = [payloads[(r * batch + j) % len(payloads)] for j in range(batch)]
        started = clock()
        requests = [RankRequest(TASK, request_rows(guard, definition, RowsQuery(p["user_id"], p["candidates"])).rows)
                    for p in group]
        rank_batch(servable, requests)
        times.append(clock() - started)
    return 1000 * statistics.median(times)


def _batch_stats(base_url: str) -> tuple[float, float]:
    """(requests ranked in batches, batches) as the endpoint exports them, summed over scorer replicas."""
    found = {"ray_grec_ranker_batched_requests_total": 0.0, "ray_grec_ranker_batches_total": 0.0}
    for line in httpx.get(f"{base_url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        if name in found:
            found[name] = float(value)
    return found["ray_grec_ranker_batched_requests_total"], found["ray_grec_ranker_batches_total"]


def _scorer_replica_names() -> list[tuple[str, str]]:
    import ray

    return [(a["name"], a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{APP_NAME}#Scorer#")]


def _fault_summary(recorder: Recorder, fault_at: float, started: float, elapsed: float) -> dict:
    after = [a for a in recorder.answers if a[0] + a[1] >= fault_at]
    failed = [a for a in after if a[2] != "200"]
    refused = [a[0] + a[1] for a in after if a[2] == "503"]
    summary = recorder.summary(started, elapsed)
    summary.update({
        "failed_after_fault": len(failed),
        "timeouts": sum(1 for a in after if a[2] == "504" or "Timeout" in a[2]),
        "seconds_of_503s": round(max(refused) - min(refused), 2) if refused else 0.0,
        "seconds_to_recover": round(max(a[0] + a[1] for a in failed) - fault_at, 2) if failed else 0.0,
    })
    return summary


def _fuzz(base_url: str, token: str, examples: int) -> dict:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    command = [binary, "run", f"{base_url}/openapi.json", "--checks", "all", "--header",
               f"Authorization: Bearer {token}", "--max-examples", str(examples), "--seed", "0",
               "--workers", "2", "--no-color"]
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp)
    cases = re.search(r"(\d+) generated, (\d+) found", done.stdout) or re.search(r"(\d+) generated", done.stdout)
    return {"exit_code": done.returncode, "examples_per_operation": examples,
            "test_cases": int(cases.group(1)) if cases else None,
            "failures": int(cases.group(2)) if cases and cases.lastindex == 2 else 0,
            "summary": done.stdout[done.stdout.rfind("SUMMARY"):][-1500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(parser, concurrency=[8, 32, 128], requests=400, time_cap=60.0)
    parser.add_argument("--fault-concurrency", type=int, default=32)
    parser.add_argument("--redis-outage", type=float, default=10.0, help="seconds Redis is stopped (default 10)")
    parser.add_argument("--fuzz-examples", type=int, default=50, help="schemathesis examples per operation")
    parser.add_argument("--max-batch-size", type=int, default=16, help="scorer @serve.batch size (default 16)")
    args = parser.parse_args()

    import ray
    from ray import serve

    from jobs.ray_runtime import start_local_ray
    from serving.app import build_app

    report: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        server = BenchRedis(root)
        server.start()
        prepared = prepare_dataset("movielens-100k", root / "data", options=SourceOptions(max_events=args.events))
        with open_online_store(server.url, create=True) as online:
            materialize(prepared.offline_store(), prepared.definition(), online)
        tracking_uri = register_champion(prepared, root, args.train_steps)
        token = "bench-token"
        config = ServingConfig(model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=tracking_uri,
                               online_store=server.url, port=_free_port(), reload_interval_s=60, api_token=token,
                               batching=BatchingConfig(max_batch_size=args.max_batch_size))
        headers = {"Authorization": f"Bearer {token}"}
        payloads = recommend_payloads(prepared, args.candidates, args.requests)

        servable = load_servable(config, "1")
        definition = prepared.definition()
        guard = StoreGuard(open_online_store(server.url), "degrade", 1.0)
        # The replicas run torch with one thread (Ray sets OMP_NUM_THREADS from their fractional CPUs);
        # the in-process baseline does the same, so both sides do identical work per forward.
        torch.set_num_threads(1)

        # A local Ray as grec starts one (loopback, token auth), but replica logs stay in Ray's log
        # files: printing every access line here would load the load generator.
        start_local_ray(num_cpus=2, object_store_memory=256 * 1024 * 1024, grec_dir=root / "grec", log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": config.port})
        serve.run(build_app(config), name=APP_NAME, route_prefix="/")
        base_url = f"http://127.0.0.1:{config.port}"
        asyncio.run(_load(base_url, headers, payloads[:20], 2, args.time_cap, 20, Recorder()))  # warm-up
        _in_process_ms(servable, guard, definition, payloads, 1, 5)

        levels = []
        for concurrency in args.concurrency:
            batch = min(concurrency, args.max_batch_size)
            single_ms = _in_process_ms(servable, guard, definition, payloads, 1, 20)
            batch_ms = _in_process_ms(servable, guard, definition, payloads, batch, max(4, 40 // batch))
            time.sleep(2.5)  # the replicas' metrics of the previous level have been reported
            before = _batch_stats(base_url)
            recorder = Recorder()
            started, elapsed = asyncio.run(_load(base_url, headers, payloads, concurrency, args.time_cap,
                                                 args.requests, recorder))
            time.sleep(2.5)
            after = _batch_stats(base_url)
            result = {"concurrency": concurrency, **recorder.summary(started, elapsed)}
            result["mean_ranker_batch"] = round((after[0] - before[0]) / max(1.0, after[1] - before[1]), 2)
            result.update({"in_process_1_request_ms": round(single_ms, 2), "in_process_batch_requests": batch,
                           "in_process_batch_ms": round(batch_ms, 2)})
            if result["ok_p50_ms"]:
                result["ok_p50_over_in_process_batch"] = round(result["ok_p50_ms"] / batch_ms, 2)
            levels.append(result)
            print(json.dumps(result), flush=True)
        report["levels"] = levels

        # A scorer replica killed under load.
        [(victim, namespace), *_] = _scorer_replica_names()

        async def kill() -> None:
            ray.kill(ray.get_actor(victim, namespace=namespace), no_restart=True)

        recorder = Recorder()
        fault_at = 5.0
        started, elapsed = asyncio.run(_load(base_url, headers, payloads, args.fault_concurrency, 25.0, None,
                                             recorder, [(fault_at, kill)]))
        report["ranker_killed"] = {"concurrency": args.fault_concurrency, "replicas": config.scorer.num_replicas,
                                   "killed_at_s": fault_at, **_fault_summary(recorder, fault_at, started, elapsed)}
        print(json.dumps(report["ranker_killed"]), flush=True)
        time.sleep(5)  # the replacement replica is up (it loads the model before taking requests)

        # Redis stopped for a while under load, then restarted with its data.
        async def stop_redis() -> None:
            await asyncio.to_thread(server.stop)

        async def start_redis() -> None:
            await asyncio.to_thread(server.start)

        recorder = Recorder()
        outage_at = 5.0
        started, elapsed = asyncio.run(_load(
            base_url, headers, payloads, args.fault_concurrency, outage_at + args.redis_outage + 10.0, None, recorder,
            [(outage_at, stop_redis), (outage_at + args.redis_outage, start_redis)]))
        report["redis_stopped"] = {"concurrency": args.fault_concurrency, "outage_s": args.redis_outage,
                                   **_fault_summary(recorder, outage_at, started, elapsed)}
        print(json.dumps(report["redis_stopped"]), flush=True)

        report["schema_fuzz"] = _fuzz(base_url, token, args.fuzz_examples)
        print(json.dumps({k: v for k, v in report["schema_fuzz"].items() if k != "summary"}), flush=True)
        serve.shutdown()
        ray.shutdown()
        guard.store.close()
        server.stop(save=False)

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg(), "torch_threads": 1},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "serving_config": json.loads(config.model_dump_json(exclude={"api_token", "tracking_uri", "online_store"})),
        **report,
    }
    print(json.dumps({k: v for k, v in report.items() if k != "schema_fuzz"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
