"""The endpoint before and after the request path became one hop (issue 31, part 1), interleaved.

"before" is the code of `--baseline` (a commit of this repository, its files exported with `git
archive` into a temporary directory); "after" is this working tree. Each (round, code) runs in a
fresh child process whose PYTHONPATH names that code (so the Ray workers and Serve replicas import
it too), with its own local Ray (as grec starts one: loopback, token auth, 2 CPUs) and Serve running
`serving.app.build_app` with the default serving config but for the store; the two alternate within
and across rounds so that the machine's other load falls on both alike.

Per code, payload and concurrency (`--concurrency`, default 1 8 32): closed-loop clients (bench_serving_load's
load generator) send POST /v1/recommend for a random known user, either with `--candidates` given
items ("given") or with none, so that the version's recommendation stage picks them ("retrieval");
answers by status, throughput, p50/p99 of the admitted requests, and the CPU that the server's
process tree (every process the child's Ray started: GCS, raylet, proxy, replicas) spent per
answered request.

Set-up once, in a temporary directory: MovieLens-100K (`--events`) prepared and materialized into a
SQLite online store; a GRec with default widths (tiny BERT text head) trained for a few steps and
registered as champion in an MLflow SQLite store, and its recommendation stage fitted as `grec
build-index` fits it (co-visitation, a small next-item transformer, recent popularity;
`--per-source` candidates each).

    .venv/bin/python benchmarks/bench_one_hop.py --baseline COMMIT --out docs/benchmarks/one_hop_results.json \\
        --page docs/benchmarks/one_hop.md

`--in-process` measures the same two codes without Ray (issue 31, parts 3 and 6): each child loads
the champion as a scorer replica does and runs the Scorer's own request code (`Scorer._recommend`,
the store reads, the stage and the blend) with its batched forward stood in by a loop that hands
every rank request waiting together to `serving.ranking.rank_batch`, as `@serve.batch` does. Torch
runs one thread; CPU is the child's process time (`time.process_time`, every thread). Per code,
median CPU ms per request: one request at a time, and per request inside a batch of `--batch`
requests made together; for `given` and `retrieval` candidates, for the rows path alone (`rows`: a
request's 100 rows looked up and ranked for the task, what /v1/score and the pyfunc do), and for the
registered pyfunc (`mlflow.pyfunc.load_model`) on the same rows as a DataFrame, for the task and for
all tasks; timed both as grec's predict and through MLflow's `predict` (its input checks included).

    .venv/bin/python benchmarks/bench_one_hop.py --in-process --baseline COMMIT --rounds 3 \\
        --out docs/benchmarks/lean_request_results.json --page docs/benchmarks/lean_request.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT / "benchmarks") not in sys.path:  # run as a script from any directory
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from code_versions import export_commit, run_child, use_code_root_if_child, working_tree  # noqa: E402
from page_parts import machine_facts, machine_line, statuses_cell  # noqa: E402

KINDS = ("given", "retrieval")


def _set_up(root: Path, args: argparse.Namespace) -> dict:
    """Dataset, online store, registered model with its stage, and payloads under `root`."""
    from bench_serving_load import MODEL_NAME, recommend_payloads, register_champion
    from feature_store.online import materialize, open_online_store
    from feature_store.prepare import prepare_dataset
    from feature_store.sources import SourceOptions
    from grec.next_item import NextItemConfig
    from jobs.retrieval.job import IndexBuildConfig, build_recommendation_stage
    from registry.tracking import use_tracking_uri

    prepared = prepare_dataset("movielens-100k", root / "data", options=SourceOptions(max_events=args.events))
    online_store = str(root / "online.sqlite")
    with open_online_store(online_store, create=True) as online:
        materialize(prepared.offline_store(), prepared.definition(), online)
    tracking_uri = register_champion(prepared, root, args.train_steps)
    stage = IndexBuildConfig(candidates_per_source=args.per_source, eval_every=2, patience=1,
                             next_item=NextItemConfig(d_model=32, num_layers=1, num_heads=2, ffn_hidden=64,
                                                      max_length=16, max_epochs=4))
    with use_tracking_uri(tracking_uri):
        build_recommendation_stage(f"models:/{MODEL_NAME}/1", prepared.root, stage, tracking_uri=tracking_uri)
    given = recommend_payloads(prepared, args.candidates, args.requests)
    return {"tracking_uri": tracking_uri, "online_store": online_store,
            "payloads": {"given": given, "retrieval": [{k: v for k, v in p.items() if k != "candidates"}
                                                       for p in given]}}


def _child(code: str, set_up: dict, args: argparse.Namespace) -> None:
    """One code version on a fresh local Ray: one JSON line per (payload kind, concurrency)."""
    from bench_serve_modes import load_levels, served_endpoint

    with served_endpoint(set_up) as (base_url, headers):
        for kind in KINDS:
            for level in load_levels(base_url, headers, set_up["payloads"][kind], args.concurrency, args.time_cap,
                                     args.requests):
                print(json.dumps({"code": code, "kind": kind, **level}), flush=True)


def _in_process_child(code: str, set_up: dict, args: argparse.Namespace) -> None:
    """One code version in this process: one JSON line per measured path."""
    import asyncio

    import mlflow
    import torch

    from bench_serving_load import MODEL_NAME, TASK
    from feature_store.online import open_online_store
    from registry.models import feature_columns
    from serving.config import ServingConfig
    from serving.deployments import Scorer
    from serving.features import RowsQuery, StoreGuard, request_rows
    from serving.model_source import load_servable
    from serving.ranking import RankRequest, rank_batch
    from serving.schemas import RecommendRequest

    torch.set_num_threads(1)  # as in the scorer replicas
    config = ServingConfig(model_uri=f"models:/{MODEL_NAME}@champion", tracking_uri=set_up["tracking_uri"],
                           online_store=set_up["online_store"])
    servable = load_servable(config, "1")
    guard = StoreGuard(open_online_store(config.online_store), config.on_store_unavailable,
                       config.store_retry_interval_s)
    loop = asyncio.new_event_loop()
    forward = StandInBatch(servable, loop)
    scorer = _bare_scorer(Scorer.func_or_class, config, guard, forward)
    # MLflow's loader of a models:/ URI writes a file into a local store's own version directory, which
    # grec's manifest check then refuses: it loads a downloaded copy.
    pyfunc = mlflow.pyfunc.load_model(mlflow.artifacts.download_artifacts(
        f"models:/{MODEL_NAME}/1", dst_path=tempfile.mkdtemp(prefix="pyfunc-")))
    given = set_up["payloads"]["given"][:args.requests]

    def recommend(payloads: list[dict]) -> None:
        async def together() -> list:
            return await asyncio.gather(*(scorer._recommend(servable, RecommendRequest(**payload), None, "bench",
                                                            float("inf")) for payload in payloads))

        loop.run_until_complete(together())

    def rows_of(payload: dict) -> Any:
        return request_rows(guard, servable.definition, RowsQuery(payload["user_id"], payload["candidates"])).rows

    def rows_path(payloads: list[dict]) -> None:
        rank_batch(servable, [RankRequest(TASK, rows_of(payload)) for payload in payloads])

    frames = [rows_of(payload).to_pandas()[feature_columns(servable.spec)] for payload in given]  # its signature's
    frame_of = {id(payload): frame for payload, frame in zip(given, frames, strict=True)}
    paths = {
        "given": (recommend, given),
        "retrieval": (recommend, set_up["payloads"]["retrieval"][:args.requests]),
        "rows": (rows_path, given),
        "pyfunc": (lambda ps: [pyfunc._model_impl.predict(frame_of[id(p)], {"tasks": [TASK]}) for p in ps], given),
        "pyfunc_all_tasks": (lambda ps: [pyfunc._model_impl.predict(frame_of[id(p)]) for p in ps], given),
        "pyfunc_mlflow": (lambda ps: [pyfunc.predict(frame_of[id(p)], params={"tasks": [TASK]}) for p in ps], given),
    }
    for name, (run, payloads) in paths.items():
        run(payloads)  # warm-up: every payload once (title caches, merged experts), as a replica in its steady state
        batched = name in ("given", "retrieval", "rows")
        forward.wait_s = 0.0  # one request: its tasks' rank requests are made together
        result = {"code": code, "path": name, "one_request_ms": _cpu_ms_per_request(run, payloads, 1)}
        if batched:
            forward.wait_s = 0.5
            result[f"in_batch_of_{args.batch}_ms"] = _cpu_ms_per_request(run, payloads, args.batch)
        print(json.dumps(result), flush=True)


class StandInBatch:
    """The Scorer's `forward` without Serve: the rank requests made together go to rank_batch in one
    call, as @serve.batch does. A batch closes `wait_s` after its first request (the others of a
    batch are still reading the store in threads); idle time is not CPU time."""

    def __init__(self, servable: Any, loop: Any) -> None:
        self.servable, self.loop = servable, loop
        self.wait_s = 0.0
        self._waiting: list[tuple[Any, Any]] = []

    def _flush(self) -> None:
        from serving.ranking import rank_batch

        batch, self._waiting = self._waiting, []
        for (_, future), result in zip(batch, rank_batch(self.servable, [r for r, _ in batch]), strict=True):
            future.set_result(result)

    async def __call__(self, request: Any) -> Any:
        future = self.loop.create_future()
        self._waiting.append((request, future))
        if len(self._waiting) == 1:
            self.loop.call_later(self.wait_s, self._flush)
        return await future


def _bare_scorer(scorer_class: type, config: Any, guard: Any, forward: StandInBatch) -> Any:
    """A Scorer without Serve: its request code as is, `forward` stood in."""
    scorer = scorer_class.__new__(scorer_class)
    scorer._config, scorer._guard, scorer._representations = config, guard, {}
    scorer.forward = forward
    return scorer


def _cpu_ms_per_request(run: Any, payloads: list[dict], batch: int) -> float:
    """Median process CPU ms per request of `run` over `payloads`, `batch` requests per call."""
    samples = []
    for start in range(0, len(payloads) - batch + 1, batch):
        began = time.process_time()
        run(payloads[start:start + batch])
        samples.append((time.process_time() - began) / batch)
    return round(1000 * statistics.median(samples), 2)


def _run_child(code: str, root: Path, set_up_file: Path, args: argparse.Namespace) -> list[dict]:
    return run_child(__file__, code, root, [
        "--set-up", str(set_up_file), "--requests", str(args.requests), "--time-cap", str(args.time_cap),
        "--batch", str(args.batch), *(["--in-process"] if args.in_process else []),
        "--concurrency", *map(str, args.concurrency)])


def _page(report: dict, command: str) -> str:
    """The markdown page of a run: the command, what ran, the table per round and the medians."""
    s = report["settings"]
    lines = [
        "# Serving: the request path in one hop, before and after (issue 31, part 1)", "",
        "```", command, "```", "",
        f"before: commit `{report['baseline']}` (ingress -> feature lookup and ranker deployments: per "
        "/v1/recommend of a version with a stage, one call for the user's state, one for the candidates, one for "
        "the rows and one per ranked task, the rows shipped as Arrow tables through the ingress); "
        f"after: commit `{report['after']}`{' plus uncommitted changes' if report['after_dirty'] else ''} "
        "(ingress -> scorer: one call per request, the whole request in one replica).", "",
        f"What runs: MovieLens-100K ({s['events']:,} events) prepared and materialized into a SQLite online store; "
        f"a GRec with default widths (tiny BERT text head) trained for {s['train_steps']} steps, registered as "
        f"`champion`, with its recommendation stage ({s['per_source']} candidates per source). For each of "
        f"{s['rounds']} rounds, both codes in alternating order, each in a fresh child process with its own local "
        "Ray (loopback, token auth, 2 CPUs) and Serve running `serving.app.build_app` with the default serving "
        f"config. Per code, payload and concurrency ({', '.join(map(str, s['concurrency']))}): closed-loop "
        f"clients send `POST /v1/recommend` (k 10) for a random known user, with {s['candidates']} given "
        "candidates (`given`) or none, the stage choosing them (`retrieval`); at most "
        f"{s['requests']} answers or {s['time_cap']:g} s per level. Server CPU: user + system time of every "
        "process the child's Ray started (GCS, raylet, proxy, replicas), per answered request.", "",
        f"{machine_line(report['machine'])} Runs are short; read the figures as a comparison within a round.", "",
        "| round | code | candidates | concurrency | answers | requests/s | p50 ms | p99 ms | server CPU ms / answer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        if "failed" in run:
            lines.append(f"| {run['round']} | {run['code']} | failed ({run['failed']}) | | | | | | |")
            continue
        lines.append(f"| {run['round']} | {run['code']} | {run['kind']} | {run['concurrency']} | "
                     f"{statuses_cell(run['statuses'])} | "
                     f"{run['throughput_ok_rps']} | {run['ok_p50_ms']} | {run['ok_p99_ms']} | "
                     f"{run['server_cpu_ms_per_answer']} |")
    lines += ["", "Medians over the rounds:", "",
              "| candidates | concurrency | requests/s before | after | p50 ms before | after | "
              "CPU ms / answer before | after |", "|---|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        for clients in s["concurrency"]:
            cells = []
            for key in ("throughput_ok_rps", "ok_p50_ms", "server_cpu_ms_per_answer"):
                for code in ("before", "after"):
                    values = [r[key] for r in report["runs"] if r.get("code") == code and r.get("kind") == kind
                              and r.get("concurrency") == clients and r.get(key) is not None]
                    cells.append(f"{statistics.median(values):.1f}" if values else "-")
            lines.append(f"| {kind} | {clients} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


IN_PROCESS_PATHS = {
    "given": "/v1/recommend, 100 given candidates",
    "retrieval": "/v1/recommend, the stage's candidates",
    "rows": "100 given rows looked up and ranked for the task",
    "pyfunc": "registered pyfunc, the same 100 rows, the task",
    "pyfunc_all_tasks": "registered pyfunc, the same 100 rows, every task",
    "pyfunc_mlflow": "registered pyfunc through MLflow's predict, the task",
}


def _in_process_page(report: dict, command: str) -> str:
    """The markdown page of an in-process run: the command, what ran, per-round figures and medians."""
    s = report["settings"]
    batch = f"in_batch_of_{s['batch']}_ms"
    lines = [
        "# Serving: the fixed work per request and the registered pyfunc, in process (issue 31, parts 3 and 6)", "",
        "```", command, "```", "",
        f"before: commit `{report['baseline']}`; after: commit `{report['after']}`"
        f"{' plus uncommitted changes' if report['after_dirty'] else ''}.", "",
        f"What runs: MovieLens-100K ({s['events']:,} events) in a SQLite online store; a GRec with default widths "
        f"(tiny BERT text head) trained for {s['train_steps']} steps, registered as `champion`, with its "
        f"recommendation stage ({s['per_source']} candidates per source, its fitted blends). For each of "
        f"{s['rounds']} rounds, both codes in alternating order, each in a fresh process with one torch thread: "
        "the Scorer's own request code (`Scorer._recommend`: store reads, the stage, rows, blend) with its batched "
        "forward handed to `serving.ranking.rank_batch` as `@serve.batch` does; the rows path alone; the "
        "registered pyfunc (`mlflow.pyfunc.load_model`) on the same rows as a DataFrame. Every payload runs "
        f"once untimed first (title caches). Up to {s['requests']} requests per path; median process CPU ms per "
        f"request, one request at a time and per request inside a batch of {s['batch']} made together.", "",
        machine_line(report["machine"]), "",
        f"| round | code | path | CPU ms, one request | CPU ms per request, batch of {s['batch']} |",
        "|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        if "failed" in run:
            lines.append(f"| {run['round']} | {run['code']} | failed ({run['failed']}) | | |")
            continue
        lines.append(f"| {run['round']} | {run['code']} | {run['path']} | {run['one_request_ms']} | "
                     f"{run.get(batch, '')} |")

    def median(code: str, path: str, key: str) -> float | None:
        values = [r[key] for r in report["runs"] if r.get("code") == code and r.get("path") == path and key in r]
        return statistics.median(values) if values else None

    lines += ["", "Medians over the rounds (after / before: the ratio):", "",
              f"| path | one request before | after | after / before | batch of {s['batch']} before | after | "
              "after / before |", "|---|---|---|---|---|---|---|"]
    for path, what in IN_PROCESS_PATHS.items():
        cells = []
        for key in ("one_request_ms", batch):
            before, after = median("before", path, key), median("after", path, key)
            cells += [f"{before:.2f}" if before else "-", f"{after:.2f}" if after else "-",
                      f"{after / before:.2f}x" if before and after else "-"]
        lines.append(f"| {path} ({what}) | " + " | ".join(cells) + " |")
    ratios = {}
    for code in ("before", "after"):
        rows, pyfunc = median(code, "rows", "one_request_ms"), median(code, "pyfunc", "one_request_ms")
        ratios[code] = f"{pyfunc / rows:.2f}x" if rows and pyfunc else "-"
    lines += ["", f"After: the pyfunc for the task costs {ratios['after']} the served rows path for the same rows "
              f"(before: {ratios['before']})."]
    return "\n".join(lines) + "\n"


def main() -> None:
    use_code_root_if_child()
    from bench_serving_load import add_load_options

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_options(parser, concurrency=[1, 8, 32], requests=200, time_cap=20.0)
    parser.add_argument("--baseline", default="HEAD", help="the commit measured as 'before' (default HEAD)")
    parser.add_argument("--per-source", type=int, default=100, help="candidates each stage source adds (default 100)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both codes, interleaved (default 2)")
    parser.add_argument("--page", type=Path, help="write the markdown page here")
    parser.add_argument("--in-process", action="store_true",
                        help="measure the request code in process (CPU per request), not the endpoint")
    parser.add_argument("--batch", type=int, default=16, help="requests per batch in process (default 16)")
    parser.add_argument("--work", type=Path, help="keep the set-up here and reuse it when it is there")
    parser.add_argument("--child", choices=("before", "after"), help=argparse.SUPPRESS)
    parser.add_argument("--code-root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--set-up", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (_in_process_child if args.in_process else _child)(args.child, json.loads(args.set_up.read_text()), args)
        return

    command = ".venv/bin/python benchmarks/bench_one_hop.py " + shlex.join(sys.argv[1:])
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        before_root = root / "before"
        baseline = export_commit(args.baseline, before_root)
        work = args.work or root
        work.mkdir(parents=True, exist_ok=True)
        set_up_file = work / "set_up.json"
        if not set_up_file.exists():
            set_up_file.write_text(json.dumps(_set_up(work, args)))
        codes = {"before": before_root, "after": REPO_ROOT}
        for round_index in range(args.rounds):
            order = ["before", "after"] if round_index % 2 == 0 else ["after", "before"]
            for code in order:
                levels = _run_child(code, codes[code], set_up_file, args)
                runs += [{"round": round_index, **level} for level in levels]
                print(json.dumps(levels), flush=True)
    report = {
        "machine": machine_facts(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                     if k not in ("child", "code_root", "set_up", "out", "page", "work")},
        "baseline": baseline, **working_tree(),
        "command": command, "runs": runs,
    }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.page:
        args.page.write_text((_in_process_page if args.in_process else _page)(report, command))


if __name__ == "__main__":
    main()
