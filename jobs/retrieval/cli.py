"""`grec build-index`: fit a registered model version's recommendation stage (the candidates and the
blends /v1/recommend ranks by) and log it with the version."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

# Light at import (the standard library only): `grec --help` builds this parser.
from jobs.options import add_require_integrity, add_tracking_uri

if TYPE_CHECKING:  # the job module imports numpy and pyarrow: not at `grec --help`
    from jobs.retrieval.job import IndexBuildConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-index", help="fit a model version's recommendation stage (candidate sources and blends)",
        description="Fit the version's recommendation stage on the prepared dataset in a Ray task: co-visitation "
                    "of users' latest items, grec's causal next-item transformer over their histories and recent "
                    "popularity, each tuned on the validation split (a small grid, early stopping), and per "
                    "binary task a blend of these sources and the ranker's task scores fitted on the validation "
                    "lists; then refit on train + validation and log the stage as the version's retrieval index "
                    "in the MLflow registry. `grec serve`, `grec recommend` and `grec evaluate` use it; versions "
                    "without one offer the most popular items.",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--data", required=True, metavar="DIR_OR_URI",
                   help="the prepared dataset the model was trained on (grec data prepare), or its s3:// URI")
    p.add_argument("--k", type=int, default=10, metavar="K", help="list length the blends are fitted for (default 10)")
    p.add_argument("--candidates-per-source", type=int, default=100, metavar="N",
                   help="items each source adds to a user's candidates (default 100)")
    p.add_argument("--no-next-item", action="store_true", help="leave the next-item transformer out")
    p.add_argument("--no-covisitation", action="store_true", help="leave the co-visitation source out")
    p.add_argument("--no-ranker-terms", action="store_true",
                   help="blends use the stage's sources only, not the ranker's task scores")
    p.add_argument("--max-epochs", type=int, default=None, metavar="N",
                   help="upper bound of next-item epochs (default 200; early stopping on validation decides)")
    p.add_argument("--validation-users", type=int, default=None, metavar="N",
                   help="judge settings on at most N validation users (a seeded sample; default: all)")
    p.add_argument("--cpus", type=float, default=1.0, metavar="C", help="CPUs of the fitting task (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the next-item training and sampling (default 0)")
    add_tracking_uri(p)
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local Ray)")
    add_require_integrity(p)
    p.set_defaults(func=_build_index)


def index_config(args: argparse.Namespace) -> IndexBuildConfig:
    """The fit's settings the command's options give (also what benchmarks/profile_build_index.py fits)."""
    from grec.next_item import NextItemConfig
    from jobs.retrieval.job import IndexBuildConfig

    next_item = None
    if not args.no_next_item:
        next_item = NextItemConfig(seed=args.seed, **({"max_epochs": args.max_epochs} if args.max_epochs else {}))
    return IndexBuildConfig(k=args.k, candidates_per_source=args.candidates_per_source,
                            covisitation=not args.no_covisitation, next_item=next_item,
                            ranker_terms=not args.no_ranker_terms, max_validation_users=args.validation_users,
                            train_cpus=args.cpus, seed=args.seed)


def _build_index(args: argparse.Namespace) -> int:
    from jobs.retrieval.job import build_recommendation_stage
    from registry.tracking import use_tracking_uri

    config = index_config(args)
    with use_tracking_uri(args.tracking_uri) as tracking_uri:
        result = build_recommendation_stage(args.model, args.data, config, tracking_uri=tracking_uri,
                                            address=args.address)
    report = result.validation
    print(f"recommendation stage of {result.model_name} version {result.model_version}: {result.items} items, "
          f"judged on {report['validation_users']} validation users (NDCG@{args.k} of every event)")
    if "covisitation" in report:
        print(f"  co-visitation {report['covisitation']['ndcg']:.4f} (best of {report['covisitation']['tried']})")
    if "next_item" in report:
        print(f"  next-item transformer {report['next_item']['ndcg']:.4f} ({report['next_item']['epochs']} epochs)")
    window = report["popularity"]["window_days"]
    print(f"  popularity {report['popularity']['ndcg']:.4f} (window: {'all history' if window is None else f'{window:g} days'})")
    for task, blend in report["blends"].items():
        weights = ", ".join(f"{name} {weight:g}" for name, weight in blend["weights"].items())
        print(f"  blend for {task}: NDCG@{args.k} {blend['ndcg']:.4f} on validation ({weights})")
    print(f"  built in {result.seconds['total']:.0f} s; logged at {result.uri}")
    return 0
