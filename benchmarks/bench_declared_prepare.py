"""A declared dataset at scale: `grec data prepare --definition` on 10M events, against the built-in
synthetic source of the same size in the same run.

Fresh processes (each peak RSS is its own):
  1. write: a shop's files as a team would hand them over: events as Parquet partitioned by day
     (string user and item ids, a device, a click flag, a dwell time), 1M users with a country and
     an age, 200k items with a text title, a list of tags and a price; and their declaration
     (two tasks from conditions, the items' text, a sequence of the last items);
  2. write-synthetic: the built-in synthetic source's own tables written as Parquet files (events
     partitioned by day), with a declaration that says what the source's code does;
  3. declared: `prepare_dataset(open_declared(...))` of the shop, the path of `grec data prepare
     --definition`;
  4. declared-synthetic: the same path over the synthetic source's files (the same data as 5: what
     reading and checking files costs over generating rows in memory);
  5. synthetic: `prepare_dataset("synthetic")` with as many events, the baseline.
Reported per prepare: total seconds, events per second, peak RSS, and the seconds of each stage
(the prepare's own stage records: ingest per view, training set, transforms); and whether the
declared synthetic files prepared the source's training set, row for row, and its spec.

    .venv/bin/python benchmarks/bench_declared_prepare.py --events 10000000 --users 1000000 --items 200000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DAYS = 100
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
WORDS = ("red blue green black white small large cotton wool linen summer winter classic slim loose soft warm "
         "light dark striped plain vintage modern sport casual formal").split()
CATEGORIES = ("shirts", "shoes", "hats", "bags", "coats", "dresses", "socks", "belts")
DECLARATION = """\
name: shop-{events}
events:
  path: events
  user: {{column: visitor, name: user_id}}
  item: {{column: sku, name: item_id}}
  time: {{column: ts, unit: ms}}
  features:
    - {{column: device, kind: categorical}}
users:
  path: users.parquet
  key: visitor
  features:
    - {{column: country, kind: categorical}}
    - {{column: age, kind: numeric}}
items:
  path: items.parquet
  key: sku
  features:
    - {{column: title, kind: text, max_length: 16}}
    - {{column: tags, kind: multi_hot}}
    - {{column: price, kind: numeric}}
sequences:
  - {{name: hist_item_id, column: item_id, length: {sequence_length}}}
tasks:
  - {{name: click, kind: binary, positive: clicked == 1, descriptors: {{type: click}}}}
  - {{name: long_view, kind: binary, positive: dwell_s > 30, role: auxiliary, descriptors: {{type: dwell}}}}
"""


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def step_write(workdir: Path, args: argparse.Namespace) -> dict:
    """The files, written a day at a time (memory holds one day's events)."""
    start = time.perf_counter()
    rng = np.random.default_rng(0)
    users, items = args.users, args.items
    visitor_ids = np.char.add("v", np.arange(users).astype(str))
    sku_ids = np.char.add("sku-", np.arange(items).astype(str))
    words = rng.integers(0, len(WORDS), (items, 5))
    category = rng.integers(0, len(CATEGORIES), items)
    pq.write_table(pa.table({
        "sku": sku_ids,
        "title": [" ".join(WORDS[w] for w in row) + f" {CATEGORIES[c]}" for row, c in zip(words, category, strict=True)],
        "tags": pa.array([[CATEGORIES[c], WORDS[row[0]]] for row, c in zip(words, category, strict=True)]),
        "price": rng.uniform(2, 300, items),
    }), workdir / "items.parquet")
    profiled = users - users // 20  # 5% of visitors have no profile: kept, counted
    pq.write_table(pa.table({"visitor": visitor_ids[:profiled], "country": rng.choice(["FR", "DE", "US", "ES"], profiled),
                             "age": rng.integers(16, 80, profiled)}), workdir / "users.parquet")
    per_day = -(-args.events // DAYS)
    taste = rng.integers(0, len(CATEGORIES), users)
    for day in range(DAYS):
        n = min(per_day, args.events - day * per_day)
        if n <= 0:
            break
        who = rng.integers(0, users, n)
        what = np.minimum((items * rng.random(n) ** 2).astype(np.int64), items - 1)  # popular items first
        clicked = (rng.random(n) < np.where(taste[who] == category[what], 0.6, 0.15)).astype(np.int64)
        folder = workdir / "events" / f"day={day:03d}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({
            "visitor": visitor_ids[who], "sku": sku_ids[what],
            "ts": START_MS + day * 86_400_000 + np.sort(rng.integers(0, 86_400_000, n)),
            "device": rng.choice(["ios", "android", "web"], n),
            "clicked": clicked, "dwell_s": rng.exponential(np.where(clicked == 1, 40.0, 6.0)),
        }), folder / "part-0.parquet")
    (workdir / "shop.yaml").write_text(DECLARATION.format(events=args.events, sequence_length=args.sequence_length))
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}


SYNTHETIC_DECLARATION = """\
name: synthetic
events:
  path: events
  user: user_id
  item: item_id
  time: event_timestamp
  features:
    - {{column: device, kind: categorical}}
users:
  path: users.parquet
  key: user_id
  time: feature_timestamp
  features:
{user_features}
items:
  path: items.parquet
  key: item_id
  time: feature_timestamp
  features:
{item_features}
sequences:
  - {{name: hist_item_id, column: item_id, length: {sequence_length}}}
tasks:
  - {{name: task_0, kind: binary, positive: label_task_0 == 1, descriptors: {{type: type_0, scenario: synthetic}}}}
  - {{name: task_1, kind: binary, positive: label_task_1 == 1, role: auxiliary,
     descriptors: {{type: type_1, scenario: synthetic}}}}
"""


def _synthetic_source(args: argparse.Namespace):
    from feature_store.options import SourceOptions, SyntheticOptions
    from feature_store.sources import get_source

    return get_source("synthetic", SourceOptions(sequence_length=args.sequence_length,
                                                 synthetic=SyntheticOptions(num_events=args.events)))


def step_write_synthetic(workdir: Path, args: argparse.Namespace) -> dict:
    """The synthetic source's tables as files, and their declaration (two tasks, as the default)."""
    start = time.perf_counter()
    folder = workdir / "synthetic_files"
    folder.mkdir()
    for view, chunks in _synthetic_source(args).tables():
        for index, chunk in enumerate(chunks):
            if view == "events":
                (folder / "events" / f"part={index:03d}").mkdir(parents=True)
                pq.write_table(chunk, folder / "events" / f"part={index:03d}" / "0.parquet")
            else:
                pq.write_table(chunk, folder / f"{view}.parquet")
    views = {view: pq.read_schema(folder / f"{view}.parquet") for view in ("users", "items")}

    def features(view: str) -> str:
        names = [n for n in views[view].names if n not in ("user_id", "item_id", "feature_timestamp")]
        return "\n".join(f"    - {{column: {n}, kind: {'categorical' if n.endswith('segment') else 'numeric'}}}"
                         for n in names)

    (folder / "synthetic.yaml").write_text(SYNTHETIC_DECLARATION.format(
        user_features=features("users"), item_features=features("items"), sequence_length=args.sequence_length))
    return {"seconds": time.perf_counter() - start, "peak_rss_mb": _peak_rss_mb()}


class _Stages(logging.Handler):
    """Collects the prepare's stage records (feature_store.prepare logs each at DEBUG)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seconds: dict[str, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "stage"):
            self.seconds[record.stage] = round(record.seconds, 2)


def _prepare(source, out: Path, events: int) -> dict:
    from feature_store.prepare import prepare_dataset

    logger = logging.getLogger("feature_store.prepare")
    stages = _Stages()
    logger.addHandler(stages)
    logger.setLevel(logging.DEBUG)
    start = time.perf_counter()
    prepared = prepare_dataset(source, out)
    seconds = time.perf_counter() - start
    summary = prepared.summary()
    rows = sum(split["rows"] for split in summary["splits"].values())
    return {"seconds": seconds, "events": events, "rows": rows, "events_per_s": events / seconds,
            "peak_rss_mb": _peak_rss_mb(), "stages": stages.seconds, "buckets": summary["num_buckets"],
            "source": summary.get("source", {})}


def step_declared(workdir: Path, args: argparse.Namespace) -> dict:
    from feature_store.options import SourceOptions
    from feature_store.sources.declared import open_declared

    source = open_declared(workdir / "shop.yaml", SourceOptions(sequence_length=args.sequence_length))
    return _prepare(source, workdir / "declared", args.events)


def step_declared_synthetic(workdir: Path, args: argparse.Namespace) -> dict:
    from feature_store.options import SourceOptions
    from feature_store.sources.declared import open_declared

    source = open_declared(workdir / "synthetic_files" / "synthetic.yaml",
                           SourceOptions(sequence_length=args.sequence_length))
    return _prepare(source, workdir / "declared_synthetic", args.events)


def step_synthetic(workdir: Path, args: argparse.Namespace) -> dict:
    result = _prepare(_synthetic_source(args), workdir / "synthetic", args.events)
    from feature_store.prepare import open_prepared

    declared, built_in = open_prepared(workdir / "declared_synthetic"), open_prepared(workdir / "synthetic")
    same = declared.spec() == built_in.spec()
    for split in ("train", "validation", "test"):  # file by file (one bucket's rows at a time)
        mine, theirs = (sorted((p.training_dir / f"split={split}").glob("*.parquet")) for p in (declared, built_in))
        same = same and [p.name for p in mine] == [p.name for p in theirs] and all(
            pq.read_table(a).equals(pq.read_table(b)) for a, b in zip(mine, theirs, strict=True))
    result["declared_synthetic_same_training_set"] = same
    return result


STEPS = {"write": step_write, "write-synthetic": step_write_synthetic, "declared": step_declared,
         "declared-synthetic": step_declared_synthetic, "synthetic": step_synthetic}


def _run_step(step: str, workdir: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--step", step, "--workdir", str(workdir), "--events", str(args.events),
               "--users", str(args.users), "--items", str(args.items), "--sequence-length", str(args.sequence_length)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"step {step} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--sequence-length", type=int, default=50)
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one, removed after)")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(STEPS[args.step](args.workdir, args)))
        return
    workdir = Path(tempfile.mkdtemp(prefix="grec-bench-declared-", dir=args.workdir))
    try:
        write = _run_step("write", workdir, args)
        files_mb = _folder_mb(workdir / "events")
        declared = _run_step("declared", workdir, args)
        shutil.rmtree(workdir / "declared")
        write_synthetic = _run_step("write-synthetic", workdir, args)
        declared_synthetic = _run_step("declared-synthetic", workdir, args)
        synthetic = _run_step("synthetic", workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}",
              "events": args.events, "users": args.users, "items": args.items,
              "sequence_length": args.sequence_length, "events_parquet_mb": round(files_mb, 1),
              "write": write, "declared": declared, "write_synthetic": write_synthetic,
              "declared_synthetic": declared_synthetic, "synthetic": synthetic}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
