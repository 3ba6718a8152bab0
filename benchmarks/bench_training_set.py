"""Training-set generation on the synthetic source: rows per second and peak memory.

For each size, three fresh processes (so each peak RSS is its own):
  1. ingest: generate the synthetic events in chunks and ingest them into an offline store;
  2. build: time split + point-in-time training set with sequences (the measured step);
  3. floor: read every bucket and write it back unchanged (the I/O floor of step 2), the
     baseline the build time is compared with.

    .venv/bin/python benchmarks/bench_training_set.py --events 1000000 5000000 --sequence-length 50
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from feature_store.offline_store import OfflineStore
from feature_store.prepare import EVENTS_PER_BUCKET
from feature_store.sources import SourceOptions, SyntheticOptions, get_source
from feature_store.training_set import SplitConfig, build_training_set, time_split_for


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _source(events: int, sequence_length: int):
    return get_source("synthetic", SourceOptions(sequence_length=sequence_length,
                                                 synthetic=SyntheticOptions(num_events=events)))


def step_ingest(workdir: Path, events: int, sequence_length: int) -> dict:
    source = _source(events, sequence_length)
    definition = source.definition()
    store = OfflineStore(workdir / "offline", num_buckets=max(1, -(-events // EVENTS_PER_BUCKET)))
    start = time.perf_counter()
    for view_name, chunks in source.tables():
        store.ingest(definition.view(view_name), chunks)
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb(), "buckets": store.num_buckets}


def step_build(workdir: Path, events: int, sequence_length: int) -> dict:
    definition = _source(events, sequence_length).definition()
    store = OfflineStore(workdir / "offline")
    start = time.perf_counter()
    split = time_split_for(store, definition, SplitConfig())
    stats = build_training_set(store, definition, workdir / "training_set", split)
    seconds = time.perf_counter() - start
    rows = sum(s.rows for s in stats.splits.values())
    return {"seconds": seconds, "rows": rows, "rows_per_s": rows / seconds, "peak_rss_mb": _peak_rss_mb()}


def step_floor(workdir: Path, events: int, sequence_length: int) -> dict:
    definition = _source(events, sequence_length).definition()
    store = OfflineStore(workdir / "offline")
    out = workdir / "floor"
    out.mkdir(exist_ok=True)
    start = time.perf_counter()
    for bucket in range(store.num_buckets):
        pq.write_table(store.read_bucket(definition.events_name, bucket), out / f"part-{bucket:05d}.parquet",
                       compression="zstd")
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}


STEPS = {"ingest": step_ingest, "build": step_build, "floor": step_floor}


def _run_step(step: str, workdir: Path, events: int, sequence_length: int) -> dict:
    command = [sys.executable, __file__, "--step", step, "--workdir", str(workdir),
               "--events", str(events), "--sequence-length", str(sequence_length)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"step {step} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 5_000_000])
    parser.add_argument("--sequence-length", type=int, default=50)
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args.workdir, args.events[0], args.sequence_length)))
        return
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"{'events':>10} {'buckets':>7} {'ingest s':>9} {'build s':>8} {'rows/s':>10} {'build peak MB':>13} "
          f"{'floor s':>8} {'build/floor':>11}")
    for events in args.events:
        workdir = Path(tempfile.mkdtemp(prefix="grec-bench-", dir=args.workdir))
        try:
            ingest = _run_step("ingest", workdir, events, args.sequence_length)
            build = _run_step("build", workdir, events, args.sequence_length)
            floor = _run_step("floor", workdir, events, args.sequence_length)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"{events:>10} {ingest['buckets']:>7} {ingest['seconds']:>9.1f} {build['seconds']:>8.1f} "
              f"{build['rows_per_s']:>10.0f} {build['peak_rss_mb']:>13.0f} {floor['seconds']:>8.1f} "
              f"{build['seconds'] / floor['seconds']:>11.1f}", flush=True)
        print(json.dumps({"events": events, "ingest": ingest, "build": build, "floor": floor}), flush=True)


if __name__ == "__main__":
    main()
