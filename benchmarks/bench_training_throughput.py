"""Training throughput: the Ray Train + DeepSpeed job with 1 and 2 workers against a plain
single-process PyTorch loop over the same model and data, and the time of the first
`deepspeed.initialize` with prebuilt ops.

    .venv/bin/python benchmarks/bench_training_throughput.py [--events 100000] [--epochs 2]

Samples per second are measured over the training part of the last epoch (warm: processes started,
ops loaded); the job reads, transforms and collates through Ray Data like the baseline does in-process.
On a 2-core machine the workers share one CPU (one keeps the Ray Data pipeline fed): each worker
runs one torch thread, so `per_core_ratio` compares a worker with the plain loop on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

MODEL = {"d_model": 32, "embedding_dim": 16, "num_heads": 2, "ffn_hidden": 64, "expert_hidden": 64,
         "tower_hidden": 16, "router": {"num_experts": 4, "top_k": 1}}
BATCH = 256
LR = 1e-3


def prepare(out: Path, events: int):
    from feature_store.prepare import prepare_dataset
    from feature_store.sources import SourceOptions

    return prepare_dataset("movielens-100k", out, options=SourceOptions(max_events=events, sequence_length=20))


def plain_loop(prepared, epochs: int, threads: int) -> float:
    """Samples/s of a single-process loop: read -> transform -> collate -> step, last epoch."""
    import torch

    from grec import GRecConfig, InputSpec, build_model

    torch.set_num_threads(threads)
    config = GRecConfig.from_dict({**MODEL, "input": InputSpec.from_json(prepared.spec_path).to_dict()})
    model = build_model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    transforms = prepared.transforms()
    rate = 0.0
    for _ in range(epochs):
        rows, started = 0, time.perf_counter()
        for raw in prepared.iter_split("train", batch_size=BATCH):
            batch = model.collate(transforms.transform(raw))
            loss, _ = model.loss(model(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            rows += batch.size
        rate = rows / (time.perf_counter() - started)
    return rate


def ray_job(prepared, workers: int, epochs: int, tracking_uri: str, storage: str) -> dict[str, float]:
    """The job's last epoch: training samples/s, the share of training spent waiting for input, and
    the epoch's wall time with validation and the checkpoint."""
    from jobs.train import parse_config, run_training

    config = parse_config({
        "dataset": {"path": str(prepared.root), "shuffle_buffer": 0}, "model": MODEL,
        "optimizer": {"name": "adamw", "lr": LR},
        "deepspeed": {"zero_stage": 0, "gradient_clipping": 1.0},
        "training": {"epochs": epochs, "batch_size": BATCH, "log_every_n_steps": 50,
                     "early_stopping": {"metric": "val/loss", "patience": epochs}},
        "scaling": {"num_workers": workers, "cpus_per_worker": 1 / workers,
                    "storage_path": storage, "max_failures": 0},
        "mlflow": {"tracking_uri": tracking_uri, "experiment": "bench", "registered_model": "bench"},
    })
    result = run_training(config, show_progress=False)
    last = result.history[-1]
    return {"samples_per_s": last["samples_per_second"], "input_wait_fraction": last["input_wait_fraction"],
            "epoch_wall_s": last["seconds"]}


DS_INIT = """
import os, time
started = time.perf_counter()
import deepspeed, torch
from grec import GRecConfig, InputSpec, build_model
from jobs.train.config import parse_config
from jobs.train.engine import initialize_engine
imported = time.perf_counter()
spec = InputSpec.from_json(os.environ["SPEC"])
model = build_model(GRecConfig.from_dict({**%(model)r, "input": spec.to_dict()}))
config = parse_config({"dataset": {"path": "."}, "deepspeed": {"zero_stage": int(os.environ["STAGE"])}})
built = time.perf_counter()
initialize_engine(model, config, world_size=1)
print(f"{imported - started:.2f} {time.perf_counter() - built:.2f}")
"""


def first_deepspeed_initialize(prepared, stage: int) -> tuple[float, float]:
    """(import seconds, first deepspeed.initialize seconds) in a fresh process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "SPEC": str(prepared.spec_path), "STAGE": str(stage),
           "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", DS_INIT % {"model": MODEL}], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[-2]), float(out[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=100_000,
                        help="MovieLens events to prepare (all of MovieLens-100K by default: epochs long enough "
                             "that the start of each epoch's data stream does not dominate)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepare(Path(tmp) / "data", args.events)
        rows = prepared.summary()["splits"]["train"]["rows"]
        results = {"train_rows": rows, "batch_size": BATCH, "cpus": os.cpu_count()}
        for stage in (0, 2, 3):
            imports, init = first_deepspeed_initialize(prepared, stage)
            results[f"deepspeed_initialize_first_s_zero{stage}"] = round(init, 2)
        results["deepspeed_import_s"] = round(imports, 2)
        for threads in (1, 2):
            results[f"plain_{threads}thread_samples_per_s"] = round(plain_loop(prepared, args.epochs, threads), 1)
        uri = f"sqlite:///{tmp}/mlflow.db"
        for workers in (1, 2):
            for name, value in ray_job(prepared, workers, args.epochs, uri, f"{tmp}/ray_results").items():
                results[f"ray_{workers}worker_{name}"] = round(value, 3)
        per_core = results["plain_1thread_samples_per_s"]
        for workers in (1, 2):
            results[f"ray_{workers}worker_per_core_ratio"] = round(
                results[f"ray_{workers}worker_samples_per_s"] / workers / per_core, 3)
        results["ray_2worker_vs_plain_2thread_ratio"] = round(
            results["ray_2worker_samples_per_s"] / results["plain_2thread_samples_per_s"], 3)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
