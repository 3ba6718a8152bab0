"""`grec encode-users`, `grec distill` and `grec quantize`: compact serving of a registered model —
its user side stored per user in the online store, a distilled student, a quantized version."""

from __future__ import annotations

import argparse
from pathlib import Path

from jobs.options import add_require_integrity, add_tracking_uri


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_encode_users(subparsers)
    _add_distill(subparsers)
    _add_quantize(subparsers)


def _tracking(p: argparse.ArgumentParser) -> None:
    add_tracking_uri(p)
    add_require_integrity(p)  # each command here loads a registered version


# ---- grec encode-users ---------------------------------------------------------------------------------
def _add_encode_users(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "encode-users", help="store every user's model user side, compressed, in the online store (Ray Data)",
        description="Compute the registered model's task-independent user tokens (wide & deep, behavior "
                    "sequences) for every user of a prepared dataset, from the online store's current features, "
                    "with a Ray Data actor pool; compress them (int8 with a scale per vector, optionally a "
                    "low-rank projection fitted on the users) and write them to the online store under the "
                    "model version. The endpoint uses a user's stored tokens while they are fresh (same "
                    "version, same user features and history) and computes them otherwise.",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--data", required=True, metavar="DIR", help="the prepared dataset whose users are encoded")
    p.add_argument("--online-store", metavar="URL_OR_PATH",
                   help="redis://host:port/db, sqlite:///PATH or a file path (default .grec/online.sqlite, where "
                        "`grec data materialize` writes and `grec serve` reads); it must exist")
    p.add_argument("--compression", choices=("int8", "fp32"), default="int8",
                   help="int8 codes with a float16 scale per vector (default), or float32 as computed")
    p.add_argument("--rank", type=int, metavar="R",
                   help="also project each token to its R leading principal directions over the users "
                        "(fitted on up to 20000 users) before quantizing; default: no projection")
    p.add_argument("--batch-size", type=int, default=256, metavar="N", help="users per batch (default 256)")
    p.add_argument("--actors", type=int, default=1, metavar="N", help="model replicas in the actor pool (default 1)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C", help="CPUs per replica (default 1)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local Ray)")
    _tracking(p)
    p.set_defaults(func=_encode_users)


def _encode_users(args: argparse.Namespace) -> int:
    from feature_store.online import default_online_store
    from jobs.compact.encode_users import encode_users
    from registry.tracking import use_tracking_uri

    with use_tracking_uri(args.tracking_uri) as tracking_uri:
        summary = encode_users(args.model, args.data, args.online_store or default_online_store(),
                               tracking_uri=tracking_uri, compression=args.compression, rank=args.rank,
                               batch_size=args.batch_size, actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                               address=args.address)
    projection = "" if summary.rank is None else (
        f", rank {summary.rank} keeping {summary.explained_variance:.4f} of the variance")
    print(f"grec encode-users: {summary.users} users of {summary.model_name} version {summary.model_version}: "
          f"{summary.num_tokens} tokens of {summary.d_model} each, {summary.compression}{projection}; "
          f"{summary.payload_bytes_per_user} bytes per user ({summary.fp32_bytes_per_user} as float32)")
    return 0


# ---- grec distill --------------------------------------------------------------------------------------
def _add_distill(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "distill", help="train a smaller student on a registered teacher's soft outputs and the labels",
        description="Train the student the config describes (a training config plus a `distillation:` section; "
                    "see configs/student_movielens.yaml) as `grec train` does — Ray Train with DeepSpeed, the "
                    "same data pipeline, MLflow — with the teacher's logits added to every training row by a Ray "
                    "Data stage and a soft-target loss added to the label loss. The student is registered under "
                    "its config's mlflow.registered_model with alias 'challenger', for the same promotion gate.",
    )
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="student config (YAML)")
    p.add_argument("--teacher", metavar="URI", help="the teacher, models:/NAME@ALIAS or models:/NAME/VERSION "
                                                    "(overrides distillation.teacher)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-workers", type=int, metavar="N", help="Ray Train workers (overrides scaling.num_workers)")
    p.add_argument("--epochs", type=int, metavar="N", help="overrides training.epochs")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (summary lines are still printed)")
    _tracking(p)
    p.set_defaults(func=_distill)


def _distill(args: argparse.Namespace) -> int:
    from jobs.compact.distill import load_student_config, run_distillation

    config, section = load_student_config(args.config)
    config = config.with_overrides(scaling={"address": args.address, "num_workers": args.num_workers},
                                   mlflow={"tracking_uri": args.tracking_uri}, training={"epochs": args.epochs})
    if args.teacher:
        section = section.model_copy(update={"teacher": args.teacher})
    result = run_distillation(config, section, show_progress=not args.no_progress)
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in result.metrics.items())
    print(f"grec distill: run {result.run_id}; registered {result.model_name} version {result.model_version} "
          f"as challenger (best epoch {result.best_epoch + 1} of {result.epochs_run}): {metrics}")
    return 0


# ---- grec quantize -------------------------------------------------------------------------------------
def _add_quantize(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "quantize", help="register a registered model version again at lower precision (bf16, fp16, int8)",
        description="Post-training quantization: load a full-precision version and register it as a new version of "
                    "the same model, its weights stored as bf16 or fp16 (computing in float32), or as int8 with a "
                    "scale per row (torch's dynamically quantized linear layers where int8 kernels are faster, "
                    "float32 on the dequantized weights elsewhere). The precision is in the model's files and the "
                    "version's tag grec.precision. The new version gets alias 'challenger' for the promotion gate "
                    "(a non-inferiority check: `grec promote --min-average-gain -0.002`).",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--precision", required=True, choices=("bf16", "fp16", "int8"))
    p.add_argument("--alias", default="challenger",
                   help="alias of the new version (default challenger; 'none' sets no alias)")
    _tracking(p)
    p.set_defaults(func=_quantize)


def _quantize(args: argparse.Namespace) -> int:
    from jobs.compact.quantize import quantize_registered
    from registry.tracking import use_tracking_uri

    with use_tracking_uri(args.tracking_uri):
        made = quantize_registered(args.model, args.precision, alias=None if args.alias == "none" else args.alias)
    alias = f" as {made.alias}" if made.alias else ""
    print(f"grec quantize: registered {made.name} version {made.version}{alias}: {made.source_uri} stored as "
          f"{made.precision}")
    return 0
