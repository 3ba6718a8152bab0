"""Load on the recommendation endpoint over loopback (issue 5, Measure).

A bounded load generator (httpx async: a fixed number of requests per level and a time cap) sends
POST /v1/recommend, each ranking `--candidates` items for a random known user, at each concurrency
in --concurrency, and reports p50 / p95 / p99 latency, throughput and errors. In the same run and
process it times the in-process path for the same work: feature lookup + transforms + the per-task
forward (`serving.ranking.rank_batch`, what a ranker replica runs) for one request, and for a batch
of as many requests as the ranker groups at that concurrency. Serving overhead = end-to-end p50 /
in-process p50 of that batch.

Set-up, all in temporary directories: MovieLens-100K (--events events) prepared and materialized
into a SQLite online store; a GRec with default widths (tiny BERT text head) trained for a few
steps; registered as champion in an MLflow SQLite store; Ray + Serve on 127.0.0.1.

    .venv/bin/python benchmarks/bench_serving_load.py --out docs/benchmarks/serving_results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402
import torch  # noqa: E402

from feature_store.online import materialize, open_online_store  # noqa: E402
from feature_store.prepare import PreparedDataset, prepare_dataset  # noqa: E402
from feature_store.sources import SourceOptions  # noqa: E402
from grec import GRecConfig, InputSpec, TextEncoderConfig, build_model  # noqa: E402
from jobs.train.in_process import train_steps  # noqa: E402
from serving.config import BatchingConfig, ServingConfig  # noqa: E402
from serving.features import request_rows  # noqa: E402
from serving.model_source import load_servable  # noqa: E402
from serving.ranking import RankRequest, rank_batch  # noqa: E402

MODEL_NAME = "grec-bench"
TASK = "like"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _train(prepared: PreparedDataset, steps: int):
    config = GRecConfig(input=InputSpec.from_json(prepared.spec_path),
                        text=TextEncoderConfig(backbone="tiny_bert"))
    columns = prepared.transforms().transform(prepared.read_split("train"))
    return train_steps(build_model(config), columns, steps=steps, batch_size=256, lr=1e-3, seed=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _load(base_url: str, payloads: list[dict], concurrency: int, time_cap_s: float) -> dict:
    """Sends `payloads` with `concurrency` requests in flight, stopping early at `time_cap_s`."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        async def worker() -> None:
            nonlocal next_index
            while next_index < len(payloads) and time.perf_counter() - started < time_cap_s:
                payload = payloads[next_index]
                next_index += 1
                sent = time.perf_counter()
                try:
                    response = await client.post("/v1/recommend", json=payload)
                    if response.status_code != 200:
                        errors[str(response.status_code)] = errors.get(str(response.status_code), 0) + 1
                        continue
                except httpx.HTTPError as err:
                    errors[type(err).__name__] = errors.get(type(err).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency, "requests": len(latencies), "errors": errors, "seconds": round(elapsed, 3),
        "throughput_rps": round(len(latencies) / elapsed, 2),
        "p50_ms": round(1000 * _percentile(latencies, 50), 2), "p95_ms": round(1000 * _percentile(latencies, 95), 2),
        "p99_ms": round(1000 * _percentile(latencies, 99), 2),
    }


def _in_process_ms(servable, store, definition, payloads: list[dict], batch: int, repeats: int) -> float:
    """Median time of lookup + transforms + forward for `batch` requests ranked together."""
    times = []
    for r in range(repeats):
        group = [payloads[(r * batch + j) % len(payloads)] for j in range(batch)]
        started = time.perf_counter()
        requests = [RankRequest(TASK, request_rows(store, definition, p["user_id"], p["candidates"]).rows)
                    for p in group]
        rank_batch(servable, requests)
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _batch_stats(base_url: str) -> tuple[float, float]:
    """(sum, count) of the ranker batch-size histogram the endpoint exports."""
    found = {"sum": 0.0, "count": 0.0}
    for line in httpx.get(f"{base_url}/metrics", timeout=30).text.splitlines():
        for key in found:
            if line.startswith(f"grec_ranker_batch_requests_{key} "):
                found[key] = float(line.split()[1])
    return found["sum"], found["count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000, help="MovieLens events to prepare (default 20000)")
    parser.add_argument("--candidates", type=int, default=100, help="items ranked per request (default 100)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=300, help="requests per concurrency level (default 300)")
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds per level at most (default 60)")
    parser.add_argument("--max-batch-size", type=int, default=16, help="ranker @serve.batch size (default 16)")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    import ray
    from ray import serve

    from registry.models import register_model
    from registry.tracking import use_tracking_uri
    from serving.app import build_app

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepared = prepare_dataset("movielens-100k", root / "data", options=SourceOptions(max_events=args.events))
        online_path = str(root / "online.sqlite")
        with open_online_store(online_path) as online:
            materialize(prepared.offline_store(), prepared.definition(), online)
        tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
        with use_tracking_uri(tracking_uri):
            register_model(_train(prepared, args.train_steps), prepared.root, MODEL_NAME,
                           prepared.read_split("train").slice(0, 3).to_pandas(), alias="champion")
        config = ServingConfig(model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=tracking_uri,
                               online_store=online_path, port=_free_port(), reload_interval_s=60,
                               batching=BatchingConfig(max_batch_size=args.max_batch_size))

        train = prepared.read_split("train", columns=["user_id", "item_id"])
        users = np.unique(train.column("user_id").to_numpy())
        items = np.unique(train.column("item_id").to_numpy())
        rng = np.random.default_rng(0)
        payloads = [{"user_id": int(rng.choice(users)), "task": TASK, "k": 10,
                     "candidates": rng.choice(items, args.candidates, replace=False).tolist()}
                    for _ in range(args.requests)]

        servable = load_servable(config, "1")
        definition = prepared.definition()
        store = open_online_store(online_path)
        # The replicas run torch with one thread (Ray sets OMP_NUM_THREADS from their fractional CPUs);
        # the in-process baseline does the same, so both sides do identical work per forward.
        torch.set_num_threads(1)

        # Replica logs stay in Ray's log files: printing them here would load the load generator.
        ray.init(num_cpus=2, object_store_memory=256 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": config.port})
        serve.run(build_app(config), name="grec-bench", route_prefix="/")
        base_url = f"http://127.0.0.1:{config.port}"
        asyncio.run(_load(base_url, payloads[:20], 2, args.time_cap))  # warm-up, both sides
        _in_process_ms(servable, store, definition, payloads, 1, 5)
        levels = []
        for concurrency in args.concurrency:
            # The baseline is timed right before its level, while the idle server shares the machine.
            batch = min(concurrency, args.max_batch_size)
            single_ms = _in_process_ms(servable, store, definition, payloads, 1, 20)
            batch_ms = _in_process_ms(servable, store, definition, payloads, batch, max(4, 40 // batch))
            before = _batch_stats(base_url)
            result = asyncio.run(_load(base_url, payloads, concurrency, args.time_cap))
            after = _batch_stats(base_url)
            result["mean_ranker_batch"] = round((after[0] - before[0]) / max(1.0, after[1] - before[1]), 2)
            result["in_process_1_request_ms"] = round(single_ms, 2)
            result["in_process_batch_requests"] = batch
            result["in_process_batch_ms"] = round(batch_ms, 2)
            result["p50_over_in_process_1"] = round(result["p50_ms"] / single_ms, 2)
            result["p50_over_in_process_batch"] = round(result["p50_ms"] / batch_ms, 2)
            levels.append(result)
            print(json.dumps(result), flush=True)
        serve.shutdown()
        ray.shutdown()
        store.close()

    report = {
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "load_average_at_end": os.getloadavg(), "torch_threads": 1},
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "levels": levels,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
