"""Options that several `grec` commands share, written once: the MLflow tracking URI,
`--require-integrity`, and the Ray Data inference options of the commands that score a split or
rank users (evaluate, promote, predict, recommend), with the tracking URI their work runs under.

Light at import (the standard library only): `grec --help` builds every parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobs.evaluate.inference import InferenceOptions


def add_tracking_uri(parser: argparse.ArgumentParser) -> None:
    """`--tracking-uri`, for a command that reads or writes the MLflow registry or runs."""
    parser.add_argument("--tracking-uri", metavar="URI",
                        help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else .grec/mlflow.db here)")


def add_require_integrity(parser: argparse.ArgumentParser) -> None:
    """`--require-integrity`, for a command that loads registered versions: for the command's run,
    $GREC_REQUIRE_INTEGRITY is 1 (jobs/cli.py sets it), so the driver and the Ray workers it starts
    refuse a version registered without a manifest of its files (registry/integrity.py)."""
    parser.add_argument("--require-integrity", action="store_true",
                        help="refuse a model version (or retrieval index) registered without a manifest of its files' "
                             "sha256 instead of loading it unchecked with a warning (also $GREC_REQUIRE_INTEGRITY=1); "
                             "files that do not match their manifest are refused either way")


def add_ray_inference(parser: argparse.ArgumentParser, batch_size: int, batch_of: str) -> None:
    """Where a Ray Data inference job runs, with how many model replicas, and which registry it reads."""
    add_tracking_uri(parser)
    parser.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local Ray)")
    parser.add_argument("--actors", type=int, default=1, metavar="N",
                        help="model replicas in the Ray Data actor pool (default 1)")
    parser.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C", help="CPUs per replica (default 1)")
    parser.add_argument("--batch-size", type=int, default=batch_size, metavar="N",
                        help=f"{batch_of} (default {batch_size})")
    add_require_integrity(parser)


def add_scored_split(parser: argparse.ArgumentParser) -> None:
    """The split of a prepared dataset that a command scores with Ray Data, and how."""
    parser.add_argument("--data", required=True, metavar="DIR_OR_URI",
                        help="a prepared dataset directory (grec data prepare), or its s3:// URI (read there, by "
                             "every node of a cluster)")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"),
                        help="split to score (default test)")
    add_ray_inference(parser, batch_size=512, batch_of="rows per inference batch")


def inference_options(args: argparse.Namespace) -> InferenceOptions:
    """The actor pool `add_ray_inference`'s options ask for."""
    from jobs.evaluate.inference import InferenceOptions

    return InferenceOptions(actors=args.actors, cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size)


def with_tracking_uri(args: argparse.Namespace, work: Callable[[], int]) -> int:
    """Runs `work()` with the MLflow tracking URI set (`args.resolved_tracking_uri` names it). Bad
    input raises a ValueError, which `grec` reports as `grec CMD: error: ...` (exit 2). Ray is
    started by the jobs themselves, after they have checked model and data."""
    from registry.tracking import use_tracking_uri

    with use_tracking_uri(args.tracking_uri) as tracking_uri:
        args.resolved_tracking_uri = tracking_uri
        return work()
