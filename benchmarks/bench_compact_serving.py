"""Compact serving (issue 15), every figure against the full-precision teacher in the same run:

1. The user side once per request: in-process cost of one request with `--candidates` items (feature
   lookup, transforms, forward; `serving.ranking.rank_batch`, the ranker's own function), the
   encoders' user side once per request vs once per candidate row (grec.encoder.distinct_rows
   replaced by the identity, which is what scoring rows as independent examples did); the same
   request with one candidate (the work a request costs whatever its size); the cost per request
   inside a ranker batch of `--batch` requests (what a replica does under load); and the endpoint's
   throughput at `--concurrency` in both modes (the per-row endpoint runs on a Ray whose workers
   patch the same function at start), with the CPU each part of the serving path (HTTP proxy,
   ingress, scorers, the rest of Ray, the load generator) spends per answered request.
2. Stored user representations (`grec encode-users`): bytes per user (int8, int8 with a low-rank
   projection, against float32), endpoint p50 at concurrency 1 and throughput with stored vs online
   user encoding, and the AUC change on the test split when each row's user side goes through the
   compression (stored representations are fresh by construction: only compression can move scores).
3. Quantized versions (`grec quantize`: bf16, fp16, int8) and a distilled student (`grec distill`,
   configs/student_movielens.yaml): size on disk, parameters, in-process and endpoint latency,
   per-task test AUC (and RMSE for regression), the AUC lift over a popularity baseline.

Set-up under `--workdir` (kept, so a second invocation skips what is done): MovieLens-100K prepared
and materialized into SQLite; the teacher trained by `grec train`'s job with
configs/movielens_grec.yaml (`--epochs`), the student by `grec distill`'s job (`--student-epochs`),
registered in an MLflow SQLite store. Torch runs one thread in process, as in the scorer replicas.

    .venv/bin/python benchmarks/bench_compact_serving.py --workdir .grec/bench/compact \\
        --out docs/benchmarks/compact_serving_results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "benchmarks"):  # run as a script from any directory
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
os.environ.setdefault("RAY_metrics_report_interval_ms", "1000")

import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import mean_squared_error, roc_auc_score  # noqa: E402

from bench_serving_load import Recorder, _load  # noqa: E402 - the load generator of the endpoint benchmark
from feature_store.online import open_online_store  # noqa: E402

TEACHER, STUDENT = "grec-movielens", "grec-movielens-student"
APP_NAME = "grec-compact-bench"
TASK = "like"


# ---- set-up ---------------------------------------------------------------------------------------------


def _set_up(workdir: Path, epochs: int, student_epochs: int, events: int | None) -> dict[str, Any]:
    """Prepared data, online store, teacher, student and quantized versions (each made once)."""
    from mlflow import MlflowClient

    from feature_store.online import materialize
    from feature_store.prepare import open_prepared, prepare_dataset
    from feature_store.sources import SourceOptions
    from jobs.compact.distill import load_student_config, run_distillation
    from jobs.train import load_config, run_training
    from registry.models import set_alias
    from jobs.compact.quantize import quantize_registered
    from registry.tracking import use_tracking_uri

    state_path = workdir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    data = workdir / "data"
    if not (data / "summary.json").exists():
        prepare_dataset("movielens-100k", data, options=SourceOptions(max_events=events))
    store = workdir / "online.sqlite"
    if not store.exists():
        with open_online_store(store, create=True) as online:
            materialize(open_prepared(data).offline_store(), open_prepared(data).definition(), online)
    tracking_uri = state.setdefault("tracking_uri", f"sqlite:///{workdir / 'mlflow.db'}")
    common = {"dataset": {"path": str(data)}, "mlflow": {"tracking_uri": tracking_uri},
              "scaling": {"storage_path": str(workdir / "ray_results")}}
    if "teacher" not in state:
        config = load_config(REPO_ROOT / "configs" / "movielens_grec.yaml").with_overrides(
            **common, training={"epochs": epochs})
        result = run_training(config, show_progress=False)
        state["teacher"] = result.model_version
        with use_tracking_uri(tracking_uri):
            set_alias(TEACHER, "champion", result.model_version)
        state_path.write_text(json.dumps(state))
    if "student" not in state:
        config, section = load_student_config(REPO_ROOT / "configs" / "student_movielens.yaml")
        config = config.with_overrides(**common, training={"epochs": student_epochs})
        section = section.model_copy(update={"teacher": f"models:/{TEACHER}/{state['teacher']}"})
        state["student"] = run_distillation(config, section, show_progress=False).model_version
        state_path.write_text(json.dumps(state))
    with use_tracking_uri(tracking_uri):
        for precision in ("bf16", "fp16", "int8"):
            if precision not in state:
                state[precision] = quantize_registered(f"models:/{TEACHER}/{state['teacher']}", precision,
                                                       alias=None, client=MlflowClient(tracking_uri)).version
                state_path.write_text(json.dumps(state))
    return {**state, "data": data, "store": store}


# ---- in-process ------------------------------------------------------------------------------------------


@contextmanager
def per_row_user_side():
    """The encoders treat every row as its own example: what scoring candidate rows as independent
    examples did before the user side was computed once per distinct history."""
    import grec.encoder as encoder

    original = encoder.distinct_rows
    encoder.distinct_rows = lambda ids: (torch.arange(ids.shape[0]), torch.arange(ids.shape[0]))
    try:
        yield
    finally:
        encoder.distinct_rows = original


def _payloads(prepared: Any, candidates: int, count: int, seed: int = 0) -> list[dict]:
    train = prepared.read_split("train", columns=["user_id", "item_id"])
    users, items = np.unique(train.column("user_id").to_numpy()), np.unique(train.column("item_id").to_numpy())
    rng = np.random.default_rng(seed)
    return [{"user_id": int(rng.choice(users)), "task": TASK, "k": 10, "exclude_seen": False,
             "candidates": rng.choice(items, candidates, replace=False).tolist()} for _ in range(count)]


class Variant(NamedTuple):
    """One way of serving a request in process: a loaded version, its online store, the stored user
    representations (None: the user side computed online), whether the encoders run per candidate
    row (as before the user side was computed once), and how many candidates to send (None: all)."""

    servable: Any
    store: Any
    representations: Any = None
    per_row: bool = False
    candidates: int | None = None


def _looked_up(variant: Variant, payload: dict) -> Any:
    from serving.features import RowsQuery, StoreGuard, request_rows

    items = payload["candidates"][:variant.candidates] if variant.candidates else payload["candidates"]
    return request_rows(StoreGuard(variant.store, "degrade", 1.0), variant.servable.definition,
                        RowsQuery(payload["user_id"], items), variant.representations)


def _timed_request(variant: Variant, payload: dict) -> tuple[float, float]:
    """(lookup seconds, request seconds) of one request: lookup + transforms + forward."""
    from serving.ranking import RankRequest, rank_batch

    started = time.perf_counter()
    found = _looked_up(variant, payload)
    looked_up = time.perf_counter()
    rank_batch(variant.servable, [RankRequest(TASK, found.rows, user_tokens=found.user_tokens)])
    return looked_up - started, time.perf_counter() - started


def _in_process_ms(variants: dict[str, Variant], payloads: list[dict], repeats: int, rounds: int = 5) -> dict:
    """Median ms of one request (lookup + transforms + forward) and of its lookup alone, per variant.
    The variants take turns, `rounds` times, so the machine's drift spreads over all of them alike."""
    totals: dict[str, list[float]] = {label: [] for label in variants}
    lookups: dict[str, list[float]] = {label: [] for label in variants}
    per_round = max(1, repeats // rounds)
    # Warm-up: every variant scores every payload once, so each version's text cache holds the
    # candidates' titles (as a serving replica's does in its steady state). Warming only part of
    # them would time MiniLM for the versions that did not share a cache with an earlier variant.
    for variant in variants.values():
        for payload in payloads[:(rounds + 1) * per_round]:
            _timed_request(variant, payload)
    for round_ in range(rounds + 1):  # round 0 is not timed either (rotary tables, allocator)
        for label, variant in variants.items():
            with per_row_user_side() if variant.per_row else nullcontext():
                for index in range(per_round):
                    payload = payloads[(round_ * per_round + index) % len(payloads)]
                    lookup, total = _timed_request(variant, payload)
                    if round_:
                        totals[label].append(total)
                        lookups[label].append(lookup)
    return {label: {"request_ms": round(1000 * statistics.median(totals[label]), 2),
                    "lookup_ms": round(1000 * statistics.median(lookups[label]), 2)} for label in variants}


def _ranker_batch_ms(variants: dict[str, Variant], payloads: list[dict], batch_size: int, rounds: int = 3) -> dict:
    """Median ms per request when a ranker scores `batch_size` requests in one batch (`rank_batch`,
    as a replica does under load with Serve's dynamic batching), per variant; rows looked up
    beforehand. Every payload is scored once untimed first (title caches), then `rounds` timed turns."""
    from serving.ranking import RankRequest, rank_batch

    batches: dict[str, list[list[Any]]] = {}
    for label, variant in variants.items():
        requests = [RankRequest(TASK, found.rows, user_tokens=found.user_tokens)
                    for found in (_looked_up(variant, payload) for payload in payloads)]
        batches[label] = [requests[i:i + batch_size] for i in range(0, len(requests) - batch_size + 1, batch_size)]
    per_request: dict[str, list[float]] = {label: [] for label in variants}
    for round_ in range(rounds + 1):
        for label, variant in variants.items():
            with per_row_user_side() if variant.per_row else nullcontext():
                for batch in batches[label]:
                    started = time.perf_counter()
                    rank_batch(variant.servable, batch)
                    if round_:
                        per_request[label].append((time.perf_counter() - started) / len(batch))
    return {label: round(1000 * statistics.median(times), 3) for label, times in per_request.items()}


# ---- quality ---------------------------------------------------------------------------------------------


def _test_scores(model: Any, columns: pa.Table, compress: Any = None, batch_rows: int = 2048) -> dict[str, np.ndarray]:
    """Predictions of every task on the transformed test split; `compress` maps each batch's user
    tokens [B, n, d] (numpy) to what the endpoint would read back from the store."""
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, columns.num_rows, batch_rows):
        batch = model.collate(columns.slice(start, batch_rows))
        with torch.inference_mode():
            tokens = None
            if compress is not None:
                tokens = torch.from_numpy(compress(model.encode_user_tokens(batch).numpy()))
            for task, values in model.predict(batch, None, tokens).items():
                out.setdefault(task, []).append(values.numpy())
    return {task: np.concatenate(parts) for task, parts in out.items()}


def _quality(scores: dict[str, np.ndarray], labels: dict[str, np.ndarray], kinds: dict[str, str]) -> dict[str, float]:
    result = {}
    for task, kind in kinds.items():
        if task not in scores:
            continue
        if kind == "binary":
            result[f"{task}/auc"] = round(float(roc_auc_score(labels[task], scores[task])), 5)
        elif kind == "regression":
            result[f"{task}/rmse"] = round(float(np.sqrt(mean_squared_error(labels[task], scores[task]))), 5)
    return result


def _popularity_scores(prepared: Any, test: pa.Table) -> np.ndarray:
    """Each test row's item scored by its number of training events."""
    train_items = prepared.read_split("train", columns=["item_id"]).column("item_id").to_numpy()
    items, counts = np.unique(train_items, return_counts=True)
    lookup = dict(zip(items.tolist(), counts.tolist(), strict=True))
    return np.array([lookup.get(item, 0) for item in test.column("item_id").to_pylist()], dtype=np.float64)


# ---- the endpoint ----------------------------------------------------------------------------------------


def _endpoint(config: Any, payloads: list[dict], concurrency: int, requests: int, time_cap: float) -> dict:
    """Runs the app for `config`, then p50 at concurrency 1 and throughput at `concurrency`."""
    from ray import serve

    from serving.app import build_app

    serve.run(build_app(config), name=APP_NAME, route_prefix="/")
    base_url = f"http://127.0.0.1:{config.port}"
    headers = {"Authorization": f"Bearer {config.api_token.get_secret_value()}"}
    # Warm-up with every payload, as in process: each scorer replica's text cache then holds the
    # candidates' titles, its steady state. Warming with a few payloads left MiniLM encoding the
    # titles first seen in the timed requests (teacher p50 ~200 ms against ~100 ms for the student,
    # which has no text encoder).
    asyncio.run(_load(base_url, headers, payloads, 2, 4 * time_cap, len(payloads), Recorder()))
    single, loaded = Recorder(), Recorder()
    started, elapsed = asyncio.run(_load(base_url, headers, payloads, 1, time_cap, min(requests, 150), single))
    one = single.summary(started, elapsed)
    before = _cpu_seconds_by_role()
    started, elapsed = asyncio.run(_load(base_url, headers, payloads, concurrency, time_cap, requests, loaded))
    many = loaded.summary(started, elapsed)
    after = _cpu_seconds_by_role()
    answered = max(1, many["answers"])
    cpu_ms = {role: round(1000 * (after[role] - before[role]) / answered, 1) for role in after}
    import httpx

    answer = httpx.post(f"{base_url}/v1/recommend", json=payloads[0], headers=headers, timeout=30).json()
    serve.delete(APP_NAME)
    return {"p50_ms_concurrency_1": one["ok_p50_ms"], f"throughput_rps_concurrency_{concurrency}": many["throughput_ok_rps"],
            f"p50_ms_concurrency_{concurrency}": many["ok_p50_ms"], "non_200": many["answers"] - many["statuses"].get("200", 0),
            "user_encoding": answer.get("user_encoding"), f"cpu_ms_per_request_concurrency_{concurrency}": cpu_ms}


# Which part of the serving path a process is, by its title (Ray names actor processes "ray::<class>").
_ROLES = (("ServeReplica:" + APP_NAME + ":Ingress", "ingress"), ("ServeReplica:" + APP_NAME + ":Scorer", "scorers"),
          ("ProxyActor", "http_proxy"))


def _cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds (user + system) so far of this machine's processes, summed by their part in
    serving: the Serve replicas and proxy, the rest of Ray (controller, raylet, GCS, dashboard and
    metrics agents), and this process (the load generator)."""
    import psutil

    totals = {role: 0.0 for _, role in _ROLES} | {"other_ray": 0.0, "load_generator": 0.0}
    me = os.getpid()
    for process in psutil.process_iter(["cmdline"]):
        try:
            command = " ".join(process.info["cmdline"] or [])
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = next((role for key, role in _ROLES if key in command), None)
        if role is None and process.pid == me:
            role = "load_generator"
        elif role is None and ("ray::" in command or "/ray/" in command):
            role = "other_ray"
        if role is not None:
            totals[role] += times.user + times.system
    return totals


def _ray(root: Path, per_row: bool = False) -> None:
    from ray import serve

    from jobs.ray_runtime import job_runtime_env, start_local_ray

    runtime_env = job_runtime_env(local=True, ship=False)
    if per_row:
        quiet = runtime_env["worker_process_setup_hook"]

        def setup() -> None:  # pickled by value: every worker (scorer replicas included) encodes per row
            quiet()
            import torch as worker_torch

            import grec.encoder as encoder

            encoder.distinct_rows = lambda ids: (worker_torch.arange(ids.shape[0]), worker_torch.arange(ids.shape[0]))

        runtime_env["worker_process_setup_hook"] = setup
    # Serve gives its HTTP proxy 3 x 5 s to come up; the per-row setup hook imports torch in every
    # worker, the proxy's too, and on a busy 2-core machine that took longer and Serve killed it.
    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
    start_local_ray(num_cpus=4, object_store_memory=256 * 1024 * 1024, grec_dir=root / "grec", runtime_env=runtime_env,
                    log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": _port()})


_PORT: list[int] = []


def _port() -> int:
    if not _PORT:
        from bench_serving_load import _free_port

        _PORT.append(_free_port())
    return _PORT[0]


# ---- main -------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="kept set-up (default: a temporary directory)")
    parser.add_argument("--epochs", type=int, default=3, help="teacher epochs (default 3)")
    parser.add_argument("--student-epochs", type=int, default=4, help="student epochs (default 4)")
    parser.add_argument("--events", type=int, help="MovieLens events to prepare (default: all 100000)")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=300, help="answers per endpoint load run (default 300)")
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds per load run at most")
    parser.add_argument("--in-process-repeats", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16,
                        help="requests per ranker batch in the batched in-process figure (default 16, the "
                             "ranker's max_batch_size)")
    parser.add_argument("--rank", type=int, default=32, help="rank of the low-rank user projection (default 32)")
    parser.add_argument("--skip-endpoint", action="store_true")
    parser.add_argument("--set-up-only", action="store_true",
                        help="prepare, train, distill and quantize into --workdir, then stop (the part that needs Ray "
                             "when the endpoint is skipped)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()

    import ray

    from feature_store.prepare import open_prepared
    from grec import InputSpec, save_model
    from grec.user_tokens import LowRankProjection, compress_tokens, decompress_tokens
    from jobs.compact.encode_users import encode_users
    from jobs.ray_runtime import ray_session
    from registry.models import load_registered
    from registry.tracking import use_tracking_uri
    from serving.config import ServingConfig
    from serving.model_source import load_servable

    with tempfile.TemporaryDirectory() as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()  # Ray Train's storage_path must be absolute
        workdir.mkdir(parents=True, exist_ok=True)
        done = workdir / "state.json"
        if done.exists() and {"teacher", "student"} <= json.loads(done.read_text()).keys():
            state = _set_up(workdir, args.epochs, args.student_epochs, args.events)  # trained: no Ray needed
        else:
            with ray_session(num_cpus=4):
                state = _set_up(workdir, args.epochs, args.student_epochs, args.events)
        if args.set_up_only:
            return
        tracking_uri, prepared = state["tracking_uri"], open_prepared(state["data"])
        versions = {"teacher": (TEACHER, state["teacher"]), "bf16": (TEACHER, state["bf16"]),
                    "fp16": (TEACHER, state["fp16"]), "int8": (TEACHER, state["int8"]),
                    "student": (STUDENT, state["student"])}
        torch.set_num_threads(1)
        report: dict[str, Any] = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                              "torch": torch.__version__},
                                  "set_up": {"teacher_epochs": args.epochs, "student_epochs": args.student_epochs,
                                             "candidates": args.candidates, "concurrency": args.concurrency}}

        # ---- models: size, parameters, quality ----
        test = prepared.read_split("test")
        columns = prepared.transforms().transform(test)
        spec = InputSpec.from_dict(prepared.spec())
        kinds = {t.name: t.kind for t in spec.tasks}
        labels = {t.name: columns.column(t.label).to_numpy() for t in spec.tasks}
        popularity = _popularity_scores(prepared, test)
        models: dict[str, Any] = {}
        quality: dict[str, dict[str, float]] = {"popularity": {
            f"{t}/auc": round(float(roc_auc_score(labels[t], popularity)), 5) for t, k in kinds.items() if k == "binary"}}
        with use_tracking_uri(tracking_uri):
            for label, (name, version) in versions.items():
                model = load_registered(f"models:/{name}/{version}").model
                size = (save_model(model, workdir / "sizes" / label) / "model.safetensors").stat().st_size
                text = model.encoder.text_encoder
                models[label] = {"precision": model.precision, "bytes_on_disk": size,
                                 "parameters": _parameters(model),
                                 "parameters_without_text_encoder": _parameters(model) - (
                                     _parameters(text) if text is not None else 0)}
                quality[label] = _quality(_test_scores(model, columns), labels, kinds)
                print(label, models[label], quality[label], flush=True)
        teacher_size, teacher_parameters = models["teacher"]["bytes_on_disk"], models["teacher"]["parameters"]
        for label, info in models.items():
            info["size_vs_teacher"] = round(info["bytes_on_disk"] / teacher_size, 3)
            info["parameters_vs_teacher"] = round(info["parameters"] / teacher_parameters, 4)
        for label in versions:
            changes = {}
            for key, value in quality[label].items():
                changes[key] = round(value - quality["teacher"][key], 5)
                if key.endswith("/auc"):
                    lift = quality["teacher"][key] - quality["popularity"][key]
                    changes[key.replace("/auc", "/lift_kept")] = round((value - quality["popularity"][key]) / lift, 4)
            quality[label + "_vs_teacher"] = changes
        report["models"], report["quality"] = models, quality

        # ---- stored user representations: bytes and AUC change from compression ----
        teacher_model = None
        with use_tracking_uri(tracking_uri):
            teacher_model = load_registered(f"models:/{TEACHER}/{state['teacher']}").model
        n, d = teacher_model.num_user_tokens, teacher_model.config.d_model
        int8 = lambda tokens: decompress_tokens(*compress_tokens(tokens, "int8"))  # noqa: E731
        sample = _user_tokens(teacher_model, prepared)
        projection = LowRankProjection.fit(sample, args.rank)
        low_rank = lambda tokens: decompress_tokens(*compress_tokens(tokens, "int8", projection), projection)  # noqa: E731
        representations = {"tokens_per_user": n, "d_model": d, "fp32_bytes": 4 * n * d,
                           "int8_bytes": n * d + 2 * n, "int8_rank_bytes": n * args.rank + 2 * n,
                           "rank": args.rank, "rank_explained_variance": round(projection.explained_variance(sample), 5)}
        representations["int8_vs_fp32"] = round(representations["int8_bytes"] / representations["fp32_bytes"], 4)
        representations["int8_rank_vs_fp32"] = round(representations["int8_rank_bytes"] / representations["fp32_bytes"], 4)
        for label, compress in (("int8", int8), (f"int8_rank{args.rank}", low_rank)):
            scored = _quality(_test_scores(teacher_model, columns, compress), labels, kinds)
            representations[f"quality_{label}"] = scored
            representations[f"auc_change_{label}"] = {k: round(v - quality["teacher"][k], 5)
                                                      for k, v in scored.items() if k.endswith("/auc")}
        report["user_representations"] = representations
        print(json.dumps(representations), flush=True)

        # ---- in-process cost of one request ----
        payloads = _payloads(prepared, args.candidates, max(args.requests, 200))
        config = ServingConfig(model_uri=f"models:/{TEACHER}@champion", tracking_uri=tracking_uri,
                               online_store=str(state["store"]), port=_port(), api_token="bench-token",
                               reload_interval_s=600)
        with open_online_store(state["store"]) as store, _stored_users(state, payloads, tracking_uri) as stored:
            servables = {label: load_servable(config.model_copy(update={"model_uri": f"models:/{name}/{version}"}),
                                              version) for label, (name, version) in versions.items()}
            variants = {"teacher_per_row": Variant(servables["teacher"], store, per_row=True),
                        **{label: Variant(servable, store) for label, servable in servables.items()},
                        "teacher_stored_int8": Variant(servables["teacher"], *stored)}
            # The same request with one candidate: the work a request costs whatever its size.
            one = {"teacher_1_candidate": Variant(servables["teacher"], store, candidates=1)}
            in_process = _in_process_ms({**variants, **one}, payloads, args.in_process_repeats)
            batched = _ranker_batch_ms(variants, payloads[:8 * args.batch], args.batch)
        base = in_process["teacher"]["request_ms"]
        in_process["once_vs_per_row"] = round(base / in_process["teacher_per_row"]["request_ms"], 3)
        in_process["fixed_share"] = round(in_process["teacher_1_candidate"]["request_ms"] / base, 3)
        for label in (*versions, "teacher_stored_int8"):
            in_process[f"{label}_vs_teacher"] = round(in_process[label]["request_ms"] / base, 3)
        in_process[f"ranker_batch_of_{args.batch}"] = {
            "ms_per_request": batched, "once_vs_per_row": round(batched["teacher"] / batched["teacher_per_row"], 3),
            **{f"{label}_vs_teacher": round(batched[label] / batched["teacher"], 3)
               for label in (*versions, "teacher_stored_int8")}}
        report["in_process"] = in_process
        print(json.dumps(in_process), flush=True)

        # ---- the endpoint ----
        if not args.skip_endpoint:
            endpoint: dict[str, Any] = {}
            clean_store = workdir / "online_without_representations.sqlite"
            _copy_without_representations(state["store"], clean_store)
            pinned = {label: config.model_copy(update={"model_uri": f"models:/{name}/{version}",
                                                       "online_store": str(clean_store)})
                      for label, (name, version) in versions.items()}
            _ray(workdir, per_row=True)
            endpoint["teacher_per_row"] = _endpoint(pinned["teacher"], payloads, args.concurrency, args.requests,
                                                    args.time_cap)
            _stop_ray()
            _ray(workdir)
            for label in versions:
                endpoint[label] = _endpoint(pinned[label], payloads, args.concurrency, args.requests, args.time_cap)
                print(label, endpoint[label], flush=True)
            encode_users(f"models:/{TEACHER}/{state['teacher']}", state["data"], str(clean_store),
                         tracking_uri=tracking_uri, compression="int8")
            endpoint["teacher_stored_int8"] = _endpoint(pinned["teacher"], payloads, args.concurrency, args.requests,
                                                        args.time_cap)
            _stop_ray()
            key = f"throughput_rps_concurrency_{args.concurrency}"
            endpoint["throughput_once_vs_per_row"] = round(endpoint["teacher"][key] / endpoint["teacher_per_row"][key], 3)
            for label in (*versions, "teacher_stored_int8"):
                endpoint[f"{label}_p50_vs_teacher"] = round(endpoint[label]["p50_ms_concurrency_1"]
                                                            / endpoint["teacher"]["p50_ms_concurrency_1"], 3)
            report["endpoint"] = endpoint
            print(json.dumps(endpoint), flush=True)
        if ray.is_initialized():
            _stop_ray()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _parameters(module: Any) -> int:
    """Weights of a module, its int8 linear layers' included (they hold packed weights, not parameters)."""
    from grec.quantization import float_state_dict

    return sum(t.numel() for t in float_state_dict(module).values() if t.is_floating_point())


def _user_tokens(model: Any, prepared: Any, rows: int = 4096) -> np.ndarray:
    """The user tokens of the first training rows (a sample to fit the low-rank projection on)."""
    columns = prepared.transforms().transform(prepared.read_split("train").slice(0, rows))
    with torch.inference_mode():
        return model.encode_user_tokens(model.collate(columns)).numpy()


@contextmanager
def _stored_users(state: dict, payloads: list[dict], tracking_uri: str):
    """(store, representations): a copy of the online store where the job's encoder (the class its
    Ray actors run) wrote the teacher's int8 representations of the payloads' users."""
    import shutil

    from feature_store.online.representations import RepresentationsMeta, RepresentationStore, now_iso
    from jobs.compact.encode_users import UserEncoder

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "online.sqlite"
        shutil.copy(state["store"], copy)
        users = sorted({p["user_id"] for p in payloads})
        encoder = UserEncoder(f"models:/{TEACHER}/{state['teacher']}", tracking_uri, str(copy))
        encoder.meta = RepresentationsMeta(encoder.model.num_user_tokens, encoder.model.config.d_model, "int8", None,
                                           len(users), now_iso(), "bench")
        encoder(pa.table({"user": users}))
        with open_online_store(copy) as store:
            representations = RepresentationStore(store, TEACHER, state["teacher"])
            representations.write_meta(encoder.meta)
            yield store, representations


def _copy_without_representations(source: Path, target: Path) -> None:
    import shutil
    import sqlite3

    shutil.copy(source, target)
    with sqlite3.connect(target) as connection:
        connection.execute("DELETE FROM features WHERE view LIKE 'user_representations/%'")


def _stop_ray() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
