"""`grec build-index`: train the retrieval head of a registered model version and index its catalogue."""

from __future__ import annotations

import argparse

# Light at import (the standard library only): `grec --help` builds this parser.
from jobs.cli import add_require_integrity


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build-index", help="build a model version's retrieval index (two-tower vectors + ANN index)",
        description="Encode the training split's positive rows and the item catalogue with the registered "
                    "model (Ray Data), train a user/item two-tower head over the model's tokens with in-batch "
                    "negatives (a Ray task), index every item's vector with faiss (HNSW), and log the index as "
                    "the version's retrieval index in the MLflow registry. `grec serve` then retrieves each "
                    "user's candidates from it; versions without one use popularity.",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--data", required=True, metavar="DIR_OR_URI",
                   help="the prepared dataset the model was trained on (grec data prepare), or its s3:// URI")
    p.add_argument("--positive-task", metavar="TASK",
                   help="binary task whose positive training rows are the (user, item) pairs to learn "
                        "(default: the model's main binary task)")
    p.add_argument("--index", choices=("hnsw", "flat"), default="hnsw",
                   help="faiss index: hnsw (approximate, default) or flat (exact)")
    p.add_argument("--epochs", type=int, default=None, metavar="N", help="two-tower training epochs (default 20)")
    p.add_argument("--dim", type=int, default=None, metavar="D", help="size of user and item vectors (default 128)")
    p.add_argument("--seed", type=int, default=0, help="seed of the two-tower training (default 0)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else .grec/mlflow.db here)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--actors", type=int, default=1, metavar="N", help="model replicas encoding rows (default 1)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C", help="CPUs per replica (default 1)")
    p.add_argument("--batch-size", type=int, default=512, metavar="N", help="rows per encoding batch (default 512)")
    add_require_integrity(p)
    p.set_defaults(func=_build_index)


def _build_index(args: argparse.Namespace) -> int:
    from feature_store.storage import local_dataset
    from grec.retrieval import TwoTowerConfig
    from jobs.evaluate.inference import InferenceOptions
    from jobs.retrieval.job import IndexBuildConfig, build_retrieval_index
    from registry.tracking import use_tracking_uri

    tower = TwoTowerConfig(**{k: v for k, v in {"epochs": args.epochs, "dim": args.dim, "seed": args.seed}.items()
                              if v is not None})
    config = IndexBuildConfig(two_tower=tower, positive_task=args.positive_task, index=args.index,
                              inference=InferenceOptions(actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                                                         batch_size=args.batch_size))
    with use_tracking_uri(args.tracking_uri) as tracking_uri:
        result = build_retrieval_index(args.model, local_dataset(args.data), config, tracking_uri=tracking_uri,
                                       address=args.address)
    print(f"retrieval index of {result.model_name} version {result.model_version}: {result.items} items, "
          f"two-tower trained on {result.positives} positive rows of {result.positive_task!r} "
          f"(loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f}), ANN recall@100 {result.ann_recall:.3f}")
    print(f"  built in {result.seconds['total']:.1f} s (encode {result.seconds['encode']:.1f} s, "
          f"train and index {result.seconds['train_and_index']:.1f} s); logged at {result.uri}")
    return 0
