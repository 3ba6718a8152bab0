"""Recommendations a user would accept (issue 16): quality of /v1/recommend, index build time and
endpoint latency with retrieval vs popularity candidates, on MovieLens-100K's time split.

Takes a trained, registered model and the dataset it was trained on (the main job's, or any `grec
train` run), then, in one run on a local Ray:

1. Builds the version's retrieval index with the job `grec build-index` runs, once per seed
   (`--seeds`): build time (encode, train and index) and the index's recall against exact search.
2. Replays /v1/recommend as of the test split's start for every test user with a liked item (the
   code `grec evaluate` runs, jobs/evaluate/recommend.py) after each build: HR@10, NDCG@10,
   recall@100 of the candidate stage, coverage and seen share of popularity, popularity ranked by
   the model, retrieval, retrieval ranked by the model (= /v1/recommend) and implicit's ALS (the
   peer, on every interaction before the split); mean and spread over the seeds.
3. Serves the version twice on loopback with the default serving config, candidates from the
   index (`retrieval: index`), then from popularity, and sends the same sequential requests
   (`--requests`, warm users, no candidates, k 10) to each: p50 / p95 and their ratio.

    .venv/bin/python benchmarks/bench_recommend.py --model models:/grec-movielens/1 \\
        --data .grec/data/movielens-100k --online-store .grec/online.sqlite --out docs/benchmarks/recommend_results.json
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT))

import httpx  # noqa: E402

from feature_store.prepare import open_prepared  # noqa: E402
from grec.retrieval import TwoTowerConfig  # noqa: E402
from jobs.evaluate.recommend import RecommendEvalConfig, evaluate_recommend  # noqa: E402
from jobs.ray_runtime import ray_session  # noqa: E402
from jobs.retrieval.job import IndexBuildConfig, build_retrieval_index  # noqa: E402
from registry.models import load_registered, resolve_version  # noqa: E402
from registry.tracking import use_tracking_uri  # noqa: E402
from serving.config import ServingConfig  # noqa: E402
from serving.retrieval import load_version_retriever  # noqa: E402

TASK = "like"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mean_spread(values: list[float]) -> dict[str, float]:
    return {"mean": round(statistics.fmean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0}


def _latency(model_uri: str, tracking_uri: str, online_store: str, retrieval: str, users: list[int],
             requests: int) -> dict:
    """p50 / p95 of sequential /v1/recommend requests without candidates (after a warm-up)."""
    from ray import serve

    from serving.app import build_app

    port = _free_port()
    config = ServingConfig(model_uri=model_uri, tracking_uri=tracking_uri, online_store=online_store, port=port,
                           retrieval=retrieval)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config), name=f"bench-{retrieval}", route_prefix="/")
    seconds, sources = [], set()
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for i in range(requests + 20):
                started = time.perf_counter()
                response = client.post("/v1/recommend", json={"user_id": users[i % len(users)], "task": TASK, "k": 10})
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                sources.add(response.json()["candidates_from"])
                if i >= 20:  # the first requests load the version in every replica
                    seconds.append(elapsed)
    finally:
        serve.delete(f"bench-{retrieval}")
        serve.shutdown()
    return {"requests": len(seconds), "candidates_from": sorted(sources),
            "p50_ms": round(1000 * float(np.percentile(seconds, 50)), 2),
            "p95_ms": round(1000 * float(np.percentile(seconds, 95)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="models:/NAME/VERSION (or @alias) trained on --data")
    parser.add_argument("--data", required=True, help="the prepared MovieLens-100K directory")
    parser.add_argument("--online-store", required=True, help="the materialized online store (for the latency part)")
    parser.add_argument("--tracking-uri", default=None, help="MLflow store (default: .grec/mlflow.db here)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="two-tower seeds (default 0 1 2)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per candidate source (default 200)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()

    prepared = open_prepared(args.data)
    results: dict = {"machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores", "model": args.model,
                     "builds": [], "replays": []}
    with use_tracking_uri(args.tracking_uri) as tracking_uri, ray_session(None):
        name, version = resolve_version(args.model)
        pinned = f"models:/{name}/{version}"
        results["model"] = pinned
        for seed in args.seeds:
            build = build_retrieval_index(pinned, prepared.root,
                                          IndexBuildConfig(two_tower=TwoTowerConfig(seed=seed)),
                                          tracking_uri=tracking_uri)
            results["builds"].append({"seed": seed, "seconds": build.seconds, "positives": build.positives,
                                      "items": build.items, "ann_recall_at_100": round(build.ann_recall, 4),
                                      "final_loss": round(build.losses[-1], 4)})
            print(f"index seed {seed}: {build.seconds}", flush=True)
            loaded = load_registered(pinned)
            replay = evaluate_recommend(loaded, load_version_retriever(loaded), prepared, "test",
                                        RecommendEvalConfig(task=TASK, seed=seed))
            results["replays"].append({"seed": seed, **replay})
            for system, metrics in replay["systems"].items():
                print(f"  {system:<18} " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
        summary = {}
        for scope in ("systems", "warm_systems"):
            summary[scope] = {
                system: {metric: _mean_spread([r[scope][system][metric] for r in results["replays"]])
                         for metric in results["replays"][0][scope][system]}
                for system in results["replays"][0][scope]}
        results["summary"] = summary
        results["build_seconds"] = _mean_spread([b["seconds"]["total"] for b in results["builds"]])
        train_users = prepared.read_split("train", columns=["user_id"]).column("user_id").to_pylist()
        users = list(dict.fromkeys(train_users))
        latency = {source: _latency(pinned, tracking_uri, str(Path(args.online_store).resolve()), source, users,
                                    args.requests)
                   for source in ("index", "popularity")}
        ratio = latency["index"]["p50_ms"] / latency["popularity"]["p50_ms"]
        latency["p50_ratio_index_over_popularity"] = round(ratio, 3)
        results["latency"] = latency
    print(json.dumps({"summary": results["summary"]["systems"], "build_seconds": results["build_seconds"],
                      "latency": latency}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
