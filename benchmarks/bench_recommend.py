"""Top-N quality of /v1/recommend's lists against the recommenders a team would run instead, on
MovieLens-100K, from one command; and the endpoint's latency with the recommendation stage.

For each protocol (`grec data prepare --split`: user_time, leave_one_out with ties in ingestion order
and in seeded random orders, global_time) and each seed:
1. prepare MovieLens-100K with the protocol (cached in --workdir);
2. train the ranker of configs/movielens_grec.yaml in this process (jobs/train/local_fit.py: the model,
   losses and early stopping of `grec train`, one thread; training CPU seconds recorded) and register
   it in a temporary MLflow store;
3. fit its recommendation stage (`recommend.fit`, what `grec build-index` runs in its Ray task;
   CPU seconds recorded) and log it with the version;
4. judge the lists on the test split with `jobs.evaluate.recommend.evaluate_recommend`, the code
   `grec evaluate` runs (grec's lists through `recommend.recommender.rank_lists`, the endpoint's
   code), against popularity, recent popularity, item-kNN, ALS, BPR and EASE, each tuned with
   --trials settings on validation, and SASRec (rectools, in its own venv, benchmarks/sasrec_peer/),
   tuned with the same number of trials; paired bootstrap intervals of each peer's difference to grec.
The 21-task MovieLens (`movielens-100k-genres`) adds the `like` target with its own config.
`--latency` serves the user_time version on loopback and times sequential /v1/recommend requests
with the stage and with popularity candidates.

    .venv/bin/python benchmarks/bench_recommend.py --out docs/benchmarks/recommend_results.json
    .venv/bin/python benchmarks/bench_recommend.py --report docs/benchmarks/recommend_results.json \
        --page docs/benchmarks/recommend.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT))

SASREC_DIR = REPO_ROOT / "benchmarks" / "sasrec_peer"
TARGETS = {"movielens-100k": ("rated", "like"), "movielens-100k-genres": ("like",)}
CONFIGS = {"movielens-100k": "configs/movielens_grec.yaml", "movielens-100k-genres": "configs/movielens_genres_grec.yaml"}


def _git_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()


def prepared_dataset(workdir: Path, dataset: str, protocol: str, tie_seed: int | None) -> Any:
    from feature_store.options import SplitConfig
    from feature_store.prepare import open_prepared, prepare_dataset

    ties = "ingestion" if tie_seed is None else f"ties{tie_seed}"
    root = workdir / "data" / f"{dataset}-{protocol}-{ties}"
    if not (root / "summary.json").exists():
        prepare_dataset(dataset, root, split=SplitConfig(protocol, tie_seed=tie_seed), overwrite=True)
    return open_prepared(root)


def train_ranker(prepared: Any, dataset: str, seed: int) -> tuple[Any, Any, dict[str, float]]:
    """The config's ranker trained in process; (model, resolved config, CPU figures)."""
    from grec import build_model
    from jobs.train.local_fit import fit
    from jobs.train.config import load_config, parse_config, resolve

    data = load_config(REPO_ROOT / CONFIGS[dataset]).model_dump(mode="json")
    data["dataset"]["path"] = str(prepared.root)
    data["model"]["seed"] = seed
    data["training"]["seed"] = seed
    config = parse_config(data)
    resolved = resolve(config)
    transforms = prepared.transforms()
    train, validation = (transforms.transform(prepared.read_split(s)) for s in ("train", "validation"))
    started = time.process_time()
    result = fit(build_model(resolved.model_config), train, validation, config)
    return result.model, resolved, {"cpu_s_to_best_epoch": round(result.cpu_seconds_to_best, 1),
                                    "cpu_s_total": round(time.process_time() - started, 1),
                                    "best_epoch": result.best_epoch}


def register(model: Any, prepared: Any, name: str) -> str:
    """Registers `model` as champion of `name` in the store of the enclosing use_tracking_uri."""
    from registry.models import register_model

    example = prepared.read_split("train").slice(0, 3).to_pandas()
    return str(register_model(model, prepared.root, name, example, alias="champion").version)


def fit_and_log_stage(loaded: Any, prepared: Any, seed: int) -> tuple[Any, dict[str, Any]]:
    """Fits the version's stage and logs it in the store of the enclosing use_tracking_uri."""
    import tempfile

    from grec.next_item import NextItemConfig
    from jobs.retrieval.job import IndexBuildConfig, fit_stage
    from registry.retrieval_index import log_retrieval_index

    started = time.process_time()
    stage, report = fit_stage(loaded, prepared, IndexBuildConfig(next_item=NextItemConfig(seed=seed), seed=seed))
    report["cpu_s"] = round(time.process_time() - started, 1)
    with tempfile.TemporaryDirectory() as tmp:
        stage.save(tmp)
        log_retrieval_index(loaded.name, str(loaded.version), Path(tmp))
    return stage, report


def export_interactions(prepared: Any, path: Path) -> None:
    """The dataset's events as the SASRec peer reads them (benchmarks/sasrec_peer/run_sasrec.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recommend.offline import read_interactions

    events = read_interactions(prepared)
    pq.write_table(pa.table({"user_id": pa.array([str(u) for u in events.users.tolist()]),
                             "item_id": pa.array([str(i) for i in events.items.tolist()]),
                             "time_s": pa.array(events.times, pa.float64()),
                             "split": pa.array(events.splits.astype(np.int8)),
                             "order": pa.array(np.arange(len(events.users), dtype=np.int64))}), path)


def run_sasrec(prepared: Any, workdir: Path, seeds: list[int], trials: int) -> dict[str, Any]:
    """SASRec's lists per seed (user id -> item ids), or why it did not run."""
    venv_python = Path(os.environ.get("SASREC_VENV", REPO_ROOT / ".cache" / "sasrec-venv")) / "bin" / "python"
    setup = subprocess.run(["bash", str(SASREC_DIR / "setup_venv.sh")], capture_output=True, text=True, check=False)
    if setup.returncode != 0 or not venv_python.exists():
        return {"skipped": f"the SASRec venv could not be set up: {setup.stderr.strip()[-500:]}"}
    out = workdir / "sasrec" / prepared.root.name
    if not (out / "result.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        export_interactions(prepared, out / "interactions.parquet")
        run = subprocess.run([str(venv_python), str(SASREC_DIR / "run_sasrec.py"), "--interactions",
                              str(out / "interactions.parquet"), "--out", str(out), "--trials", str(trials),
                              "--seeds", *map(str, seeds), "--k", "50"], capture_output=True, text=True, check=False)
        if run.returncode != 0:
            return {"skipped": f"SASRec failed: {run.stderr.strip()[-800:]}"}
    import pyarrow.parquet as pq

    result = json.loads((out / "result.json").read_text())
    lists = {}
    for seed in seeds:
        table = pq.read_table(out / f"lists_seed{seed}.parquet").sort_by([("user_id", "ascending"),
                                                                          ("rank", "ascending")])
        by_user: dict[str, list[str]] = {}
        for user, item in zip(table.column("user_id").to_pylist(), table.column("item_id").to_pylist(), strict=True):
            by_user.setdefault(user, []).append(item)
        lists[seed] = by_user
    return {"result": result, "lists": lists}


def _typed(by_user: dict[str, list[str]], users: list[Any], items: list[Any]) -> dict[Any, list[Any]]:
    """SASRec's string ids back to the dataset's ids."""
    user_of = {str(u): u for u in users}
    item_of = {str(i): i for i in items}
    return {user_of[u]: [item_of.get(i, i) for i in listed] for u, listed in by_user.items() if u in user_of}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from jobs.evaluate.recommend import RecommendEvalConfig, evaluate_recommend
    from registry.models import load_registered
    from registry.tracking import use_tracking_uri

    torch.set_num_threads(1)  # CPU time is counted on one thread (the peers run single-threaded too)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    runs = []
    plans = [("movielens-100k", protocol, None, seed)
             for protocol in args.protocols for seed in (args.seeds if protocol == "user_time" else args.seeds[:1])
             if args.stated_ties or protocol != "leave_one_out"]
    if "leave_one_out" in args.protocols:
        plans += [("movielens-100k", "leave_one_out", tie, args.seeds[0]) for tie in args.tie_seeds]
    if args.genres:
        plans.append(("movielens-100k-genres", "user_time", None, args.seeds[0]))
    sasrec_cache: dict[str, Any] = {}
    for dataset, protocol, tie_seed, seed in plans:
        label = f"{dataset} {protocol} ties={'ingestion' if tie_seed is None else tie_seed} seed={seed}"
        print(f"== {label}", flush=True)
        prepared = prepared_dataset(workdir, dataset, protocol, tie_seed)
        tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
        with use_tracking_uri(tracking_uri):
            model, _, ranker_cpu = train_ranker(prepared, dataset, seed)
            name = f"bench-{dataset}-{protocol}-{tie_seed}-{seed}".replace("_", "-")
            version = register(model, prepared, name)
            loaded = load_registered(f"models:/{name}/{version}")
            stage, stage_report = fit_and_log_stage(loaded, prepared, seed)
            if args.sasrec and prepared.root.name not in sasrec_cache:
                sasrec_cache[prepared.root.name] = run_sasrec(prepared, workdir, args.seeds, args.trials)
            sasrec = sasrec_cache.get(prepared.root.name, {"skipped": "not requested (--no-sasrec)"})
            external = {}
            if "lists" in sasrec and seed in sasrec["lists"]:
                users = prepared.read_split("test", columns=[prepared.definition().user.join_key]).column(0)
                external["sasrec"] = _typed(sasrec["lists"][seed], list(dict.fromkeys(users.to_pylist())),
                                            stage.item_ids)
            for target in TARGETS[dataset]:
                config = RecommendEvalConfig(task=target, trials=args.trials, seed=seed)
                result = evaluate_recommend(loaded, stage, prepared, "test", config, external=external)
                result["details"]["sasrec"] = {**result["details"].get("sasrec", {}),
                                               **{k: v for k, v in sasrec.items() if k != "lists"}}
                result.pop("per_user", None)
                result.pop("user_ids", None)
                # The evaluation's own `protocol` (the split's settings, a dict) kept as `split`.
                runs.append({**result, "split": result.pop("protocol"), "dataset": dataset, "protocol": protocol,
                             "tie_seed": tie_seed, "seed": seed, "target": target, "ranker": ranker_cpu,
                             "stage": stage_report})
                grec, intervals = result["systems"]["grec"], result["intervals_vs_grec"]
                print(f"  {target}: grec ndcg@10 {grec['ndcg@10']:.4f} hr@10 {grec['hr@10']:.4f}; " + ", ".join(
                    f"{p} {result['systems'][p]['ndcg@10']:.4f} [{v['ndcg@10']['low']:+.3f}, {v['ndcg@10']['high']:+.3f}]"
                    for p, v in intervals.items()), flush=True)
    results = {"commit": _git_commit(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "command": " ".join(sys.argv), "runs": runs}
    if args.latency:
        results["latency"] = latency(workdir, args.requests)
    return results


def latency(workdir: Path, requests: int) -> dict[str, Any]:
    """p50 / p95 of sequential /v1/recommend requests (no candidates) with the user_time seed-0
    version's stage and with popularity candidates, on one local Ray."""
    import httpx
    from ray import serve

    from feature_store.online import materialize, open_online_store
    from jobs.ray_runtime import ray_session
    from serving.app import build_app
    from serving.config import ServingConfig

    prepared = prepared_dataset(workdir, "movielens-100k", "user_time", None)
    store = workdir / "online.sqlite"
    with open_online_store(store, create=True) as online:
        materialize(prepared.offline_store(), prepared.definition(), online)
    tracking_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    users = list(dict.fromkeys(prepared.read_split("train", columns=["user_id"]).column(0).to_pylist()))
    out: dict[str, Any] = {}
    with ray_session(None):
        for retrieval in ("index", "popularity"):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            config = ServingConfig(model_uri="models:/bench-movielens-100k-user-time-None-0@champion",
                                   tracking_uri=tracking_uri, online_store=str(store), port=port, retrieval=retrieval)
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(config), name=f"bench-{retrieval}", route_prefix="/")
            seconds = []
            try:
                with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                    for i in range(requests + 20):
                        started = time.perf_counter()
                        response = client.post("/v1/recommend", json={"user_id": users[i % len(users)],
                                                                       "task": "like", "k": 10})
                        elapsed = time.perf_counter() - started
                        response.raise_for_status()
                        if i >= 20:  # the first requests load the version in every replica
                            seconds.append(elapsed)
            finally:
                serve.delete(f"bench-{retrieval}")
                serve.shutdown()
            out[retrieval] = {"requests": len(seconds), "p50_ms": round(1000 * float(np.percentile(seconds, 50)), 1),
                              "p95_ms": round(1000 * float(np.percentile(seconds, 95)), 1)}
    out["p50_ratio_stage_over_popularity"] = round(out["index"]["p50_ms"] / out["popularity"]["p50_ms"], 3)
    return out


def _commands(results: dict[str, Any]) -> list[str]:
    command = results["command"]
    return command if isinstance(command, list) else [command]


def combined(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """One results JSON from two invocations (a long run, then the latency or another protocol):
    both commands and, where they differ, both commits are kept for the page."""
    commit = earlier["commit"] if earlier["commit"] == later["commit"] else f"{earlier['commit']}, then {later['commit']}"
    out = {**earlier, "commit": commit, "command": _commands(earlier) + _commands(later),
           "runs": earlier["runs"] + later["runs"]}
    if "latency" in later:
        out["latency"] = later["latency"]
    return out


def render(results: dict[str, Any]) -> str:
    """The results page (docs/benchmarks/recommend.md) from the results JSON."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from recommend_page import render_page

    return render_page(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--protocols", nargs="*", default=["user_time", "leave_one_out", "global_time"],
                        choices=("user_time", "leave_one_out", "global_time"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="grec and SASRec seeds (user_time)")
    parser.add_argument("--tie-seeds", type=int, nargs="*", default=[0, 1, 2],
                        help="leave-one-out again with ties in time shuffled by each seed")
    parser.add_argument("--no-stated-ties", dest="stated_ties", action="store_false",
                        help="leave-one-out with shuffled ties only (to add them to results that hold the stated rule)")
    parser.add_argument("--trials", type=int, default=12, help="settings each peer tries on validation")
    parser.add_argument("--no-genres", dest="genres", action="store_false", help="skip the 21-task MovieLens")
    parser.add_argument("--no-sasrec", dest="sasrec", action="store_false", help="skip the SASRec peer")
    parser.add_argument("--latency", action="store_true", help="also time the endpoint (stage vs popularity)")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per candidate source")
    parser.add_argument("--workdir", type=Path, default=Path(".grec/bench/recommend"))
    parser.add_argument("--out", type=Path, help="write the results JSON here")
    parser.add_argument("--report", type=Path, metavar="RESULTS_JSON", help="only render --page from this JSON")
    parser.add_argument("--add-to", type=Path, metavar="RESULTS_JSON",
                        help="add this run's runs (and latency) to an earlier results JSON and write the sum to --out")
    parser.add_argument("--page", type=Path, default=REPO_ROOT / "docs" / "benchmarks" / "recommend.md")
    args = parser.parse_args()
    if args.report:
        args.page.write_text(render(json.loads(args.report.read_text())))
        return
    results = run(args)
    if args.add_to:
        results = combined(json.loads(args.add_to.read_text()), results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str) + "\n")
        args.page.write_text(render(results))


if __name__ == "__main__":
    main()
