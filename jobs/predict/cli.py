"""`grec predict` and `grec recommend`: batch jobs of a registered model into one Parquet file each,
a split's scores (jobs/predict/predict.py) and users' top-k lists as /v1/recommend computes them
(jobs/predict/recommend.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

# Light at import (the standard library only): `grec --help` builds this parser.
from jobs.options import add_ray_inference, add_scored_split, inference_options, with_tracking_uri


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_predict(subparsers)
    _add_recommend(subparsers)


# ---- grec predict ---------------------------------------------------------------------------------------
def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="batch prediction of a registered model to Parquet (Ray Data)",
        description="Score every row of a split with Ray Data and write one Parquet file with the raw user and "
                    "item keys and one score_<task> column per task (probabilities, values or class "
                    "probabilities). The file is written under a temporary name and renamed when complete.",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    add_scored_split(p)
    p.add_argument("--out", required=True, type=Path, metavar="FILE.parquet", help="output Parquet file")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from jobs.predict.predict import predict_to_parquet

    def work() -> int:
        summary = predict_to_parquet(args.model, args.data, args.out, split=args.split,
                                     tracking_uri=args.resolved_tracking_uri, address=args.address,
                                     options=inference_options(args))
        print(f"wrote {summary.rows} predictions of {summary.model_name} version {summary.model_version} "
              f"to {summary.path} (columns: {', '.join(summary.columns)})")
        return 0

    return with_tracking_uri(args, work)


# ---- grec recommend -------------------------------------------------------------------------------------
def _add_recommend(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "recommend", help="top-k lists for many users to Parquet, as /v1/recommend computes them (Ray Data)",
        description="Compute the top-k list of each user with Ray Data, by the code /v1/recommend runs (the "
                    "version's recommendation stage, the ranker and the task's blend; each user read from the "
                    "online store as the endpoint reads it), and write one Parquet file of (user_id, rank, item_id, "
                    "score, task), written under a temporary name and renamed when complete.",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    p.add_argument("--task", required=True, metavar="TASK", help="the task to rank for (GET /v1/model's recommend_tasks)")
    p.add_argument("-k", type=int, default=10, metavar="K", help="items per user (default 10)")
    users = p.add_mutually_exclusive_group(required=True)
    users.add_argument("--users", nargs="+", metavar="ID", help="user ids (integers where the dataset's are)")
    users.add_argument("--all-users", metavar="DIR_OR_URI", help="every user of this prepared dataset")
    p.add_argument("--online-store", metavar="URL_OR_PATH",
                   help="where users are read (default .grec/online.sqlite, where `grec data materialize` writes)")
    p.add_argument("--allow-seen", action="store_true", help="allow items the user already interacted with")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.parquet", help="output Parquet file")
    add_ray_inference(p, batch_size=64, batch_of="users per call")
    p.set_defaults(func=_recommend)


def _recommend(args: argparse.Namespace) -> int:
    from feature_store.online import default_online_store
    from jobs.predict.recommend import dataset_users, recommend_to_parquet

    def work() -> int:
        users = dataset_users(args.all_users) if args.all_users else [int(u) if u.lstrip("-").isdigit() else u
                                                                      for u in args.users]
        summary = recommend_to_parquet(args.model, users, str(args.online_store or default_online_store()), args.out,
                                       task=args.task, k=args.k, exclude_seen=not args.allow_seen,
                                       tracking_uri=args.resolved_tracking_uri, address=args.address,
                                       options=inference_options(args))
        print(f"wrote {summary.rows} recommendations ({summary.users} users, top {args.k} for {summary.task!r}) of "
              f"{summary.model_name} version {summary.model_version} to {summary.path} in {summary.seconds:.0f} s")
        return 0

    return with_tracking_uri(args, work)
