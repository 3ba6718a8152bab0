"""grec at scale on a two-node loopback Ray cluster: a synthetic dataset through `grec data prepare`,
`grec train` (one epoch), `grec build-index` and `grec evaluate`, each run as an operator would.

    .venv/bin/python benchmarks/bench_scale.py --events 1000000 [--json FILE]
    .venv/bin/python benchmarks/bench_scale.py --events 1000000 --work DIR  # keeps DIR
    .venv/bin/python benchmarks/bench_scale.py --work DIR --stages build-index,evaluate  # again on DIR's model
    .venv/bin/python benchmarks/bench_scale.py --events 3000000 --object-store default  # Ray's default store

The cluster is tests/ray_test_cluster.py (a head without CPUs and one node with 2 CPUs, token auth,
loopback; the node's object store 384 MiB as in the tests, or `--object-store MIB|default`), run by
an interpreter that cannot import grec: the jobs ship grec's code to it. Storage is a folder of a
temporary directory (the "shared file system" of a single-host cluster); MLflow is a SQLite file
there. Per stage it records wall time, rows/s, peak RSS per process role (psutil, every 0.5 s over
the cluster's and the command's process trees), bytes Ray spilled (`ray memory`), lines of Ray Data
memory warnings in the command's terminal output, and for training the input-wait share and the
time to the first logged step (MLflow). Everything listens on 127.0.0.1 and is stopped at the end;
the temporary directory is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import venv
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import yaml

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
MODEL_NAME = "grec-scale"
WORKER_NODE_CPUS = 2
# The worker node's object store, MiB: the test cluster's size unless --object-store says otherwise
# ("default": Ray's own, 30% of the memory available when the node starts, capped).
WORKER_OBJECT_STORE = "384"
NUM_WORKERS = 2
BATCH_SIZE = 512
LOG_EVERY_N_STEPS = 10
SEQUENCE_LENGTH = 20
SAMPLE_SECONDS = 0.5
MIB = 1024**2
# A small model: the benchmark measures the data path and memory, not the model's cost.
MODEL = {"d_model": 32, "embedding_dim": 16, "num_heads": 2, "ffn_hidden": 64, "expert_hidden": 64,
         "tower_hidden": 16}
# The first line of each of Ray Data's warnings that a task uses more memory than it asked for
# ("Operator 'X' used up to 434.9MiB of / memory per worker", "uses ... but Ray only requests 0.0B").
MEMORY_WARNING = re.compile(r"used up to [\d.]+ ?[KMG]?i?B|uses [\d.]+ ?[KMG]?i?B of memory|only requests")


# ---- the cluster ------------------------------------------------------------------------------------
def python_without_grec(root: Path) -> Path:
    """A virtual environment with this one's packages but not grec (the same construction as
    tests/test_cluster_multinode.py's fixture: a .pth line adds site-packages without reading the
    editable install's .pth file there)."""
    venv.EnvBuilder(with_pip=False).create(root)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    (site / "packages_of_the_benchmark_environment.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root / "bin" / "python"


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Ray, AWS, MLflow or grec settings nor PYTHONPATH (a node must not find
    grec through it), plus `extra`."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "MLFLOW_", "GREC_"))
            and k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**keep, **extra}


def shared_env(token: Path) -> dict[str, str]:
    """What every node and command shares: token auth, loopback nodes, CPU DeepSpeed with prebuilt ops."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # Ray's single-host mode: nodes on 127.0.0.1
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                   str((REPO / ".cache" / "torch_extensions").resolve())),
            "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass
class Cluster:
    address: str
    process: subprocess.Popen

    def stop(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                child.kill()
            self.process.kill()


def start_cluster(work: Path, env: dict[str, str], object_store: str = WORKER_OBJECT_STORE) -> Cluster:
    python = python_without_grec(work / "python-without-grec")
    node_env = clean_env(**env, PATH=f"{python.parent}{os.pathsep}{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    process = subprocess.Popen([str(python), str(REPO / "tests" / "ray_test_cluster.py"), str(WORKER_NODE_CPUS),
                                object_store], env=node_env, cwd=work, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    line = process.stdout.readline()
    if not line:
        raise SystemExit("the cluster did not start")
    return Cluster(json.loads(line)["address"], process)


# ---- measuring -------------------------------------------------------------------------------------
def title_of(process: psutil.Process) -> str:
    """Ray's process title (a worker's first argument, e.g. ray::RayTrainWorker), else the name."""
    first = " ".join(process.cmdline()[:1])
    return first[:60] if first.startswith("ray::") else process.name()


def role_of(process: psutil.Process, driver_pid: int) -> str:
    """The role a process plays, from its name and Ray's process title."""
    if process.pid == driver_pid:
        return "driver"
    title = title_of(process)
    if title in ("raylet", "gcs_server"):
        return "raylet/GCS"
    if "RayTrainWorker" in title or "TrainController" in title:
        return "train workers"
    if re.search(r"Read|Map|Split|Write|Data|Streaming|Aggregate|Repartition", title):
        return "Ray Data workers"
    if title.startswith("ray::"):
        return "other Ray workers"
    return "other (Ray agents, the cluster's launcher, compilers)"


@dataclass
class PeakRss:
    """Peak RSS per role over a command: the largest process of the role at any sample."""

    by_role: dict[str, int] = field(default_factory=dict)
    title_by_role: dict[str, str] = field(default_factory=dict)

    def add(self, role: str, rss: int, title: str) -> None:
        if rss > self.by_role.get(role, 0):
            self.by_role[role], self.title_by_role[role] = rss, title


class RssSampler:
    """Samples the cluster's and the driver's process trees every SAMPLE_SECONDS."""

    def __init__(self, cluster_pid: int, driver_pid: int) -> None:
        self.cluster_pid, self.driver_pid, self.peak = cluster_pid, driver_pid, PeakRss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _processes(self) -> list[psutil.Process]:
        found = []
        for root in (self.cluster_pid, self.driver_pid):
            try:
                top = psutil.Process(root)
                found += [top, *top.children(recursive=True)]
            except psutil.Error:
                continue
        return found

    def _poll(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            for process in self._processes():
                try:
                    self.peak.add(role_of(process, self.driver_pid), process.memory_info().rss, title_of(process))
                except psutil.Error:
                    continue

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def spilled_bytes(address: str, env: dict[str, str]) -> int:
    """Bytes Ray has spilled since the cluster started (`ray memory --stats-only`)."""
    out = subprocess.run([str(VENV_BIN / "ray"), "memory", "--address", address, "--stats-only"], env=env,
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"Spilled (\d+) MiB", out)
    return int(found.group(1)) * MIB if found else 0


def worker_object_store_bytes(address: str, env: dict[str, str]) -> int:
    """The object store of the cluster's node with CPUs (the worker node), as Ray reports it."""
    code = ("import ray; ray.init(address=%r, logging_level='ERROR'); "
            "print(max(int(n['Resources'].get('object_store_memory', 0)) for n in ray.nodes() "
            "if n['Alive'] and n['Resources'].get('CPU', 0) > 0))" % address)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


@dataclass
class StageResult:
    name: str
    started_at: float  # time.time() when the command started
    seconds: float
    rows: int
    peak_rss: PeakRss
    spilled_bytes: int
    memory_warnings: list[str]
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"stage": self.name, "seconds": round(self.seconds, 1), "rows": self.rows,
                "rows_per_second": round(self.rows / self.seconds), "spilled_bytes": self.spilled_bytes,
                "peak_rss_mb": {role: round(rss / 1e6) for role, rss in sorted(self.peak_rss.by_role.items())},
                "largest_process_by_role": self.peak_rss.title_by_role,
                "ray_data_memory_warnings": len(self.memory_warnings),
                "memory_warning_lines": self.memory_warnings[:5], **self.extra}


def run_stage(name: str, args: list[str], rows: int, *, cluster: Cluster, env: dict[str, str], work: Path) -> StageResult:
    """Runs `grec ARGS` as a shell would, sampled; its terminal output goes to WORK/NAME.log."""
    spilled_before = spilled_bytes(cluster.address, env)
    log = work / f"{name}.log"
    started_at, started = time.time(), time.monotonic()
    with log.open("w") as out:
        command = subprocess.Popen([str(VENV_BIN / "grec"), *args], env=env, cwd=work, stdout=out,
                                   stderr=subprocess.STDOUT)
        with RssSampler(cluster.process.pid, command.pid) as sampler:
            code = command.wait()
    seconds = time.monotonic() - started
    terminal = log.read_text()
    if code != 0:
        raise SystemExit(f"{name} failed ({code}):\n{terminal[-4000:]}")
    warnings = [line for line in terminal.splitlines() if MEMORY_WARNING.search(line)]
    spilled = spilled_bytes(cluster.address, env) - spilled_before
    print(f"{name}: {seconds:.1f} s, {rows / seconds:,.0f} rows/s, spilled {spilled / MIB:.0f} MiB, "
          f"{len(warnings)} memory warnings", flush=True)
    return StageResult(name, started_at, seconds, rows, sampler.peak, spilled, warnings)


# ---- the stages ------------------------------------------------------------------------------------
def train_config(data: Path, storage: Path) -> dict:
    """configs/synthetic_grec.yaml with the small model, one epoch and the cluster's storage."""
    config = yaml.safe_load((REPO / "configs" / "synthetic_grec.yaml").read_text())
    config["dataset"]["path"] = str(data)
    config["model"].update(MODEL)
    config["training"].update(epochs=1, batch_size=BATCH_SIZE, log_every_n_steps=LOG_EVERY_N_STEPS)
    config["scaling"].update(num_workers=NUM_WORKERS, storage_path=str(storage))
    config["mlflow"].update(experiment=MODEL_NAME, registered_model=MODEL_NAME)
    return config


def training_figures(tracking_uri: str, started_at: float) -> dict:
    """From the registered version's MLflow run: the epoch's rate and input wait, and when the first
    logged step (step LOG_EVERY_N_STEPS) was logged, counted from the command's start."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = client.get_model_version_by_alias(MODEL_NAME, "challenger").run_id
    last = client.get_run(run_id).data.metrics
    steps = client.get_metric_history(run_id, "train/step_loss")
    first_logged = min(steps, key=lambda m: m.step)
    return {"samples_per_second": round(last["train/samples_per_second"]),
            "samples_per_second_per_worker": round(last["train/samples_per_second"] / NUM_WORKERS),
            "input_wait_fraction": round(last["train/input_wait_fraction"], 4),
            "epoch_seconds": round(last["epoch_seconds"], 1), "steps": max(m.step for m in steps),
            "first_logged_step": first_logged.step,
            "seconds_to_first_logged_step": round(first_logged.timestamp / 1000 - started_at, 1)}


def split_rows(data: Path) -> dict[str, int]:
    summary = json.loads((data / "summary.json").read_text())
    return {name: split["rows"] for name, split in summary["splits"].items()}


STAGES = ("prepare", "train", "build-index", "evaluate")


def run_benchmark(events: int, work: Path, stages: tuple[str, ...] = STAGES,
                  object_store: str = WORKER_OBJECT_STORE) -> dict:
    """Runs `stages` (in STAGES's order) in `work`; a stage left out that a later one needs (the
    prepared data, the registered model) must have been run in `work` before (--work)."""
    token = work / "ray_auth_token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = shared_env(token)
    data, tracking_uri = work / "data", f"sqlite:///{work / 'mlflow.db'}"
    driver_env = {**os.environ, **env, "MLFLOW_TRACKING_URI": tracking_uri,
                  "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}  # the venv's ninja first
    started = time.monotonic()
    cluster = start_cluster(work, env, object_store)
    print(f"cluster up in {time.monotonic() - started:.1f} s at {cluster.address}", flush=True)
    store_bytes = worker_object_store_bytes(cluster.address, driver_env)
    print(f"worker node object store: {store_bytes / MIB:,.0f} MiB ({object_store})", flush=True)
    done: dict[str, StageResult] = {}
    try:
        stage = dict(cluster=cluster, env=driver_env, work=work)
        if "prepare" in stages:
            done["prepare"] = run_stage("prepare", ["data", "prepare", "--dataset", "synthetic", "--num-events",
                                                    str(events), "--sequence-length", str(SEQUENCE_LENGTH), "--out",
                                                    str(data)], events, **stage)
        rows = split_rows(data)
        if "train" in stages:
            (work / "train.yaml").write_text(yaml.safe_dump(train_config(data, work / "ray_results")))
            train = run_stage("train", ["train", "--config", str(work / "train.yaml"), "--address", cluster.address,
                                        "--no-progress"], rows["train"], **stage)
            train.extra = training_figures(tracking_uri, train.started_at)
            done["train"] = train
        model = f"models:/{MODEL_NAME}@challenger"
        if "build-index" in stages:
            index = run_stage("build-index", ["build-index", "--model", model, "--data", str(data), "--address",
                                              cluster.address, "--max-epochs", "1", "--validation-users", "1000"],
                              rows["train"] + rows["validation"], **stage)
            index.extra = index_figures(tracking_uri)
            done["build-index"] = index
        if "evaluate" in stages:
            done["evaluate"] = run_stage("evaluate", ["evaluate", "--model", model, "--data", str(data), "--address",
                                                      cluster.address, "--out", str(work / "report"), "--resamples",
                                                      "0", "--recommend-users", "1000", "--peers", "popularity",
                                                      "--peer-trials", "1"], rows["test"], **stage)
    finally:
        cluster.stop()
    results = {"events": sum(rows.values()), "splits": rows, "worker_node_cpus": WORKER_NODE_CPUS,
               "worker_object_store": object_store, "worker_object_store_bytes": store_bytes,
               "num_workers": NUM_WORKERS, "batch_size_per_worker": BATCH_SIZE, "sequence_length": SEQUENCE_LENGTH,
               "model": MODEL, "stages": [done[name].to_json() for name in STAGES if name in done]}
    if len(done) == len(STAGES):
        results["one_billion_events"] = one_billion_estimate(events, rows, *(done[name] for name in STAGES))
    return results


def index_figures(tracking_uri: str) -> dict:
    """What the registered version's retrieval index reports: its fit's seconds per part and the
    validation NDCG of each blend (registry.retrieval_index's stage.json metadata)."""
    from mlflow import MlflowClient

    from registry.retrieval_index import load_recommendation_stage
    from registry.tracking import use_tracking_uri

    with use_tracking_uri(tracking_uri):
        version = MlflowClient(tracking_uri=tracking_uri).get_model_version_by_alias(MODEL_NAME, "challenger").version
        stage = load_recommendation_stage(MODEL_NAME, version)
    validation = stage.metadata.get("validation", {})
    return {"validation_ndcg": {task: round(blend["ndcg"], 5) for task, blend in validation.get("blends", {}).items()},
            "fit_seconds": validation.get("seconds", {})}


def one_billion_estimate(events: int, rows: dict[str, int], prepare: StageResult, train: StageResult,
                         index: StageResult, evaluate: StageResult) -> dict:
    """What 1B events would take at the measured rates, scaled linearly: training by workers (2 per
    node, each at the measured per-worker rate), the other stages at this run's rate (prepare runs
    in one process; build-index in one task; evaluate's scoring on one actor)."""
    scale = 1e9 / events
    per_worker = train.extra["samples_per_second_per_worker"]
    epoch_hours = {f"{nodes} nodes": round(rows["train"] * scale / (per_worker * NUM_WORKERS * nodes) / 3600, 1)
                   for nodes in (1, 8, 32)}
    return {"train_rows": round(rows["train"] * scale), "training_epoch_hours": epoch_hours,
            "prepare_hours_one_process": round(prepare.seconds * scale / 3600, 1),
            "build_index_hours_one_task": round(index.seconds * scale / 3600, 1),
            "evaluate_hours_one_actor": round(evaluate.seconds * scale / 3600, 1)}


ROLES = ("driver", "train workers", "Ray Data workers", "other Ray workers", "raylet/GCS",
         "other (Ray agents, the cluster's launcher, compilers)")


def markdown_table(results: dict) -> str:
    """The per-stage table of docs/benchmarks/scale.md."""
    header = ["stage", "wall s", "rows", "rows/s", *(f"peak RSS MB: {role}" for role in ROLES), "spilled MiB",
              "Ray Data memory warnings"]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for stage in results["stages"]:
        rss = [str(stage["peak_rss_mb"].get(role, "-")) for role in ROLES]
        lines.append(f"| {stage['stage']} | {stage['seconds']} | {stage['rows']:,} | {stage['rows_per_second']:,} | "
                     + " | ".join(rss) + f" | {stage['spilled_bytes'] // MIB} | {stage['ray_data_memory_warnings']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--table", type=Path, help="only print the table of a results file written by --json")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"comma-separated stages to run (of {', '.join(STAGES)}); the ones left out must have "
                        "run in --work before")
    parser.add_argument("--object-store", default=WORKER_OBJECT_STORE,
                        help="the worker node's object store: MiB, or 'default' for Ray's own size "
                        f"(default {WORKER_OBJECT_STORE}, the test cluster's)")
    parser.add_argument("--work", type=Path, help="keep the data, MLflow store and logs in this directory (created "
                        "if missing) instead of a temporary one, so later runs can repeat single stages")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    stages = tuple(name for name in STAGES if name in args.stages.split(","))
    unknown = set(args.stages.split(",")) - set(STAGES)
    if unknown or not stages:
        parser.error(f"--stages: unknown {sorted(unknown)}; choose from {', '.join(STAGES)}")
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        results = run_benchmark(args.events, args.work.resolve(), stages, args.object_store)
    else:
        if stages != STAGES:
            parser.error("--stages needs --work (a directory where the stages left out have run)")
        with tempfile.TemporaryDirectory(prefix="grec-bench-scale-") as work:
            results = run_benchmark(args.events, Path(work), stages, args.object_store)
    text = json.dumps(results, indent=2)
    print(text)
    print(markdown_table(results))
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
