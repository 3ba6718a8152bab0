"""`grec tune`: search a training config's hyperparameters with Ray Tune (ASHA), every trial a run of
the `grec train` job and an MLflow child run, the best config written out for `grec train`."""

from __future__ import annotations

import argparse
from pathlib import Path

# model.architecture's choices, written here because `grec --help` must not import grec (torch).
ARCHITECTURES = ("grec", "shared_bottom", "mmoe", "ple")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tune", help="search hyperparameters with Ray Tune and ASHA; write the best training config",
        description="Sample N trial configs from a search space (default: optimizer.lr, optimizer.weight_decay, "
                    "model.dropout, training.batch_size), train each as `grec train` trains (Ray Train workers "
                    "with DeepSpeed, early stopping, the config's seed), report every epoch's validation metrics "
                    "to Ray Tune, whose ASHA scheduler stops the trials "
                    "that trail. Each trial is an MLflow child run of the search's run; the best trial's training "
                    "config is written out for `grec train --config`. The architecture is a config key: "
                    "--architecture mmoe searches a baseline with the same budget.",
    )
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="training config (YAML; see configs/)")
    p.add_argument("--trials", required=True, type=int, metavar="N", help="trial configs to sample")
    p.add_argument("--space", type=Path, metavar="FILE",
                   help="search space YAML: dotted config keys -> {loguniform|uniform|randint: [low, high]} "
                        "or {choice: [values]}")
    p.add_argument("--architecture", choices=ARCHITECTURES, help="overrides model.architecture")
    p.add_argument("--epochs", type=int, metavar="N", help="most epochs per trial (overrides training.epochs; ASHA's "
                                                           "max_t)")
    p.add_argument("--num-workers", type=int, default=1, metavar="N",
                   help="Ray Train workers per trial (overrides scaling.num_workers; default 1); the best config "
                        "keeps it: scale it up with `grec train --num-workers`")
    p.add_argument("--concurrent", type=int, default=1, metavar="K",
                   help="trials run at once (default 1), each holding its workers' CPUs and 1 for its data pipeline")
    p.add_argument("--out", type=Path, metavar="FILE",
                   help="where the best training config goes (default .grec/tune/NAME/best_config.yaml)")
    p.add_argument("--name", metavar="NAME", help="the search's name (default: <mlflow experiment>-tune)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else .grec/mlflow.db here)")
    p.set_defaults(func=_tune)


def _tune(args: argparse.Namespace) -> int:
    """Bad input raises ConfigError (a ValueError): `grec tune: error: ...`, exit 2."""
    from jobs.train import load_config
    from jobs.tune.job import load_space, run_tune

    config = load_config(args.config).with_overrides(
        scaling={"address": args.address, "num_workers": args.num_workers}, mlflow={"tracking_uri": args.tracking_uri},
        training={"epochs": args.epochs}, model={"architecture": args.architecture})
    space = load_space(args.space) if args.space else None
    result = run_tune(config, args.trials, space=space, concurrent=args.concurrent, out=args.out, name=args.name)
    values = "  ".join(f"{k}={v}" for k, v in sorted(result.best_values.items()))
    print(f"grec tune: {result.trials} trials ({result.stopped_early} stopped early by ASHA), MLflow run "
          f"{result.parent_run_id}; best {config.training.early_stopping.metric} {result.best_metric:.4f} at epoch "
          f"{result.best_epoch + 1}: {values}\nbest config: {result.best_config_path}")
    return 0
