"""`grec evaluate`: offline evaluation of a registered model on a split of a prepared dataset (the
job is jobs/evaluate/job.py), optionally followed by the promotion gate on the same split."""

from __future__ import annotations

import argparse
import math
from contextlib import nullcontext
from typing import TYPE_CHECKING

# Light at import (the standard library only): `grec --help` builds this parser. numpy, Ray, torch
# and MLflow are imported by the commands that use them.
from jobs.options import add_scored_split, inference_options, with_tracking_uri
from jobs.registry.cli import add_policy_options, format_promotion, policy_from_args
from jobs.registry.promote import promote

if TYPE_CHECKING:
    from jobs.evaluate.results import EvaluationResult


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_evaluate(subparsers)


# ---- grec evaluate ------------------------------------------------------------------------------------
def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a registered model on a prepared dataset (Ray Data), write a report",
        description="Score a split with Ray Data (an actor pool, each replica loading the registered model "
                    "once), compute per-task metrics with bootstrap intervals, user slices and leave-last-out "
                    "HR@k / NDCG@k, write report.md with plots and log it to the model version's MLflow run.",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    add_scored_split(p)
    p.add_argument("--out", metavar="REPORT_DIR_OR_URI",
                   help="report directory or s3:// URI (default: .grec/reports/NAME-vVERSION-SPLIT)")
    p.add_argument("--resamples", type=int, default=200, metavar="N", help="bootstrap resamples; 0: no intervals (default 200)")
    p.add_argument("--confidence", type=float, default=0.95, metavar="P", help="interval confidence (default 0.95)")
    p.add_argument("--ranking-users", type=int, default=300, metavar="N",
                   help="users ranked leave-last-out per binary task; 0: no ranking (default 300)")
    p.add_argument("--negatives", type=int, default=99, metavar="N", help="sampled never-seen items per user (default 99)")
    p.add_argument("--k", type=int, nargs="+", default=[5, 10], metavar="K", help="HR/NDCG cutoffs (default 5 10)")
    top_n = p.add_argument_group(
        "top-N evaluation", "the lists /v1/recommend shows (the version's recommendation stage, `grec build-index`) "
        "judged on the dataset's split protocol against popularity, recent popularity, item-kNN, ALS, BPR and EASE "
        "tuned on validation: HR@k, NDCG@k, MRR@k, recall@R, coverage, novelty, paired bootstrap intervals")
    top_n.add_argument("--recommend-users", type=int, default=None, metavar="N",
                       help="judge at most N users (a seeded sample; default: every user with a relevant item)")
    top_n.add_argument("--no-recommend", action="store_true", help="skip the top-N evaluation")
    top_n.add_argument("--recommend-task", metavar="TASK",
                       help="the binary task whose positives are relevant (default: the dataset's implicit-feedback "
                            "task, else its main one)")
    top_n.add_argument("--recommend-k", type=int, default=10, metavar="K", help="list length judged (default 10)")
    top_n.add_argument("--recall-at", type=int, default=50, metavar="R", help="recall cutoff (default 50)")
    top_n.add_argument("--peers", nargs="*", default=None, metavar="PEER",
                       help="peers to compare (default: popularity recent_popularity item_knn als bpr ease)")
    top_n.add_argument("--peer-trials", type=int, default=12, metavar="N",
                       help="settings each peer tries on validation (default 12)")
    p.add_argument("--seed", type=int, default=0, help="seed of bootstrap and sampling (default 0)")
    p.add_argument("--no-log", action="store_true", help="do not log metrics and report to MLflow")
    p.add_argument("--promote", action="store_true",
                   help="then run the promotion gate (models:/NAME@challenger only) on the same split")
    add_policy_options(p)
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from feature_store.storage import current_version, is_uri, output_dir
    from jobs.evaluate.job import EvaluationConfig, evaluate_model
    from jobs.evaluate.recommend import RecommendEvalConfig

    def work() -> int:
        recommend = None
        if not args.no_recommend and args.split != "train":
            peers = {} if args.peers is None else {"peers": tuple(args.peers)}
            recommend = RecommendEvalConfig(task=args.recommend_task, k=args.recommend_k, recall_at=args.recall_at,
                                            max_users=args.recommend_users, trials=args.peer_trials,
                                            seed=args.seed, **peers)
        config = EvaluationConfig(split=args.split, resamples=args.resamples, confidence=args.confidence,
                                  ranking_users=args.ranking_users, negatives=args.negatives, ks=tuple(args.k),
                                  seed=args.seed, inference=inference_options(args), recommend=recommend)
        policy = policy_from_args(args) if args.promote else None
        if args.promote and not args.model.endswith("@challenger"):
            raise ValueError(f"--promote evaluates the challenger: pass --model models:/NAME@challenger, not {args.model}")
        with output_dir(args.out, overwrite=True) if args.out else nullcontext(None) as report_dir:
            outcome = evaluate_model(args.model, args.data, config, tracking_uri=args.resolved_tracking_uri,
                                     address=args.address, report_dir=report_dir, log_to_mlflow=not args.no_log)
        print(format_evaluation(outcome.result))
        report = f"{current_version(args.out)}/{outcome.report.name}" if is_uri(args.out or "") else outcome.report
        print(f"\nreport: {report}")
        if args.promote:
            name = args.model.removeprefix("models:/").rsplit("@", 1)[0]
            print(format_promotion(promote(name, args.data, policy, split=args.split,
                                           tracking_uri=args.resolved_tracking_uri, address=args.address,
                                           inference=inference_options(args), challenger_scores=outcome.scored)))
        return 0

    return with_tracking_uri(args, work)


def format_evaluation(result: EvaluationResult) -> str:
    from jobs.evaluate.report import summary_table

    lines = [f"{result.model_name} version {result.model_version} on {result.dataset}/{result.split} "
             f"({result.rows} rows)", "", *summary_table(result)]
    ranked = [t for t in result.tasks if t.ranking]
    if ranked:
        lines += ["", "leave-last-out ranking:"]
        for task in ranked:
            values = ", ".join(f"{k} {v.value:.4f}" for k, v in task.ranking.items() if not math.isnan(v.value))
            lines.append(f"  {task.name} ({task.ranking_users} users): {values}")
    if result.recommend:
        top_n = result.recommend
        protocol = top_n["protocol"].get("protocol", "global_time")
        lines += ["", f"top-N lists on {top_n['split']} ({protocol}) for {top_n['users']} users, target "
                      f"{top_n['task']}, full ranking over {top_n['catalogue']} items:"]
        for system, metrics in top_n["systems"].items():
            lines.append(f"  {system:<18} " + ", ".join(f"{name} {value:.4f}" for name, value in metrics.items()))
    return "\n".join(lines)
