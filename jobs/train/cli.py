"""`grec train`: train a model from a YAML config on Ray (local or a cluster), track it in MLflow and
register it with alias `challenger`."""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.options import add_tracking_uri


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train a model with DeepSpeed on Ray Train, log it to MLflow, register it as challenger",
        description="Train grec on a prepared dataset: Ray Train workers each run a DeepSpeed engine, the "
                    "training set streams through Ray Data, checkpoints allow recovery from worker failures; "
                    "metrics, plots and the model go to MLflow, the model is registered with alias 'challenger'.",
    )
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="training config (YAML; see configs/)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-workers", type=int, metavar="N", help="Ray Train workers (overrides scaling.num_workers)")
    p.add_argument("--use-gpu", action="store_true", default=None, help="one GPU per worker")
    add_tracking_uri(p)
    p.add_argument("--epochs", type=int, metavar="N", help="overrides training.epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (summary lines are still printed)")
    p.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    """A bad config raises ConfigError (a ValueError): `grec train: error: ...`, exit 2."""
    from jobs.train import load_config, run_training

    config = load_config(args.config).with_overrides(
        scaling={"address": args.address, "num_workers": args.num_workers, "use_gpu": args.use_gpu},
        mlflow={"tracking_uri": args.tracking_uri}, training={"epochs": args.epochs})
    result = run_training(config, show_progress=not args.no_progress)
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    print(f"grec train: run {result.run_id}; registered {result.model_name} version {result.model_version} "
          f"as challenger (best epoch {result.best_epoch + 1} of {result.epochs_run}): {metrics}")
    return 0
