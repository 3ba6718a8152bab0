"""`grec evaluate`, `grec promote`, `grec predict` and `grec recommend`: offline evaluation, the
promotion gate, batch prediction and batch top-k lists of registered models."""

from __future__ import annotations

import argparse
import math
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

# Light at import (the standard library only): `grec --help` builds this parser. numpy, Ray, torch
# and MLflow are imported by the commands that use them.
from jobs.cli import add_require_integrity
from jobs.promote import PromotionOutcome, PromotionPolicy, promote

if TYPE_CHECKING:
    from jobs.evaluate.inference import InferenceOptions
    from jobs.evaluate.results import EvaluationResult


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_evaluate(subparsers)
    _add_promote(subparsers)
    _add_predict(subparsers)
    _add_recommend(subparsers)


# ---- shared options ---------------------------------------------------------------------------------
def _add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DIR_OR_URI",
                   help="a prepared dataset directory (grec data prepare), or its s3:// URI (read there, by every node "
                        "of a cluster)")
    p.add_argument("--split", default="test", choices=("train", "validation", "test"), help="split to score (default test)")
    _add_ray_inference(p, batch_size=512, batch_of="rows per inference batch")


def _add_ray_inference(p: argparse.ArgumentParser, batch_size: int, batch_of: str) -> None:
    """Where a Ray Data inference job runs and with how many model replicas."""
    p.add_argument("--tracking-uri", metavar="URI",
                   help="MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI, else .grec/mlflow.db here)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: start a local Ray)")
    p.add_argument("--actors", type=int, default=1, metavar="N", help="model replicas in the Ray Data actor pool (default 1)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="C", help="CPUs per replica (default 1)")
    p.add_argument("--batch-size", type=int, default=batch_size, metavar="N", help=f"{batch_of} (default {batch_size})")
    add_require_integrity(p)


def _add_policy(p: argparse.ArgumentParser) -> None:
    default = PromotionPolicy  # the class's field defaults: building one would import the metrics
    p.add_argument("--tolerance", type=float, default=default.tolerance, metavar="R",
                   help="no task's interval of relative gain may lie below -R, i.e. a task confidently worse by "
                        f"more than R keeps the champion (default {default.tolerance}, i.e. "
                        f"{default.tolerance * 100:g}%%)")
    p.add_argument("--min-average-gain", type=float, default=default.min_average_gain, metavar="R",
                   help="the interval of the task-average relative gain must lie above R (default 0: an "
                        "improvement beyond noise)")
    p.add_argument("--promotion-resamples", type=int, default=default.resamples, metavar="N",
                   help=f"paired bootstrap draws of the promotion gate (default {default.resamples})")
    p.add_argument("--promotion-confidence", type=float, default=default.confidence, metavar="P",
                   help=f"confidence of the promotion gate's intervals (default {default.confidence})")
    p.add_argument("--primary-metric", action="append", default=[], metavar="KIND=METRIC",
                   help="metric judged for a task kind, e.g. binary=gauc (defaults: binary=auc, regression=rmse, "
                        "multiclass=accuracy); repeatable")


def _inference(args: argparse.Namespace) -> InferenceOptions:
    from jobs.evaluate.inference import InferenceOptions

    return InferenceOptions(actors=args.actors, cpus_per_actor=args.cpus_per_actor, batch_size=args.batch_size)


def _policy(args: argparse.Namespace) -> PromotionPolicy:
    metrics = {}
    for item in args.primary_metric:
        kind, sep, metric = item.partition("=")
        if not sep:
            raise ValueError(f"--primary-metric {item!r}: expected KIND=METRIC, e.g. binary=gauc")
        metrics[kind.strip()] = metric.strip()
    return PromotionPolicy(tolerance=args.tolerance, min_average_gain=args.min_average_gain, primary_metrics=metrics,
                           resamples=args.promotion_resamples, confidence=args.promotion_confidence, seed=args.seed)


def _run(args: argparse.Namespace, work) -> int:
    """Runs `work()` with the MLflow tracking URI set. Bad input raises a ValueError, which `grec`
    reports as `grec CMD: error: ...` (exit 2). Ray is started by the jobs themselves, after they
    have checked model and data."""
    from registry.tracking import use_tracking_uri

    with use_tracking_uri(args.tracking_uri) as tracking_uri:
        args.resolved_tracking_uri = tracking_uri
        return work()


# ---- grec evaluate ------------------------------------------------------------------------------------
def _add_evaluate(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="evaluate a registered model on a prepared dataset (Ray Data), write a report",
        description="Score a split with Ray Data (an actor pool, each replica loading the registered model "
                    "once), compute per-task metrics with bootstrap intervals, user slices and leave-last-out "
                    "HR@k / NDCG@k, write report.md with plots and log it to the model version's MLflow run.",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    _add_runtime(p)
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
    _add_policy(p)
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
                                  seed=args.seed, inference=_inference(args), recommend=recommend)
        policy = _policy(args) if args.promote else None
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
                                           inference=_inference(args), challenger_scores=outcome.scored)))
        return 0

    return _run(args, work)


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


# ---- grec promote ---------------------------------------------------------------------------------------
def _add_promote(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "promote", help="promote the challenger to champion if it beats the champion on the same data",
        description="Score the challenger and the champion of a registered model on the same rows; a paired "
                    "bootstrap (the same resampled rows for both) gives intervals of each task's relative gain "
                    "on its primary metric and of the task average. Move the champion alias to the challenger "
                    "only when the average's interval lies above the minimum gain and no task's interval lies "
                    "below -tolerance. The decision, intervals and row counts are recorded on the challenger's "
                    "MLflow run. With no champion, the challenger becomes champion.",
    )
    p.add_argument("--name", required=True, metavar="NAME", help="registered model name")
    _add_runtime(p)
    _add_policy(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.set_defaults(func=_promote)


def _promote(args: argparse.Namespace) -> int:
    def work() -> int:
        print(format_promotion(promote(args.name, args.data, _policy(args), split=args.split,
                                       tracking_uri=args.resolved_tracking_uri, address=args.address,
                                       inference=_inference(args))))
        return 0

    return _run(args, work)


def format_promotion(outcome: PromotionOutcome) -> str:
    decision = outcome.decision
    verdict = "PROMOTED" if decision.promote else "NOT PROMOTED"
    lines = [f"{verdict}: challenger version {outcome.challenger_version} "
             f"(champion before: {outcome.previous_champion or 'none'}, now: {outcome.champion or 'none'})",
             f"reason: {decision.reason}"]
    if decision.comparisons:
        lines.append(f"paired bootstrap: {decision.rows} rows, {decision.resamples} resamples, "
                     f"{decision.confidence:.0%} intervals of the relative gain")
    for c in decision.comparisons:
        lines.append(f"  {c.task:<16} {c.metric:<9} champion {c.champion:.4f}  challenger {c.challenger:.4f}  "
                     f"gain {c.gain:+.3%} [{c.gain_low:+.3%}, {c.gain_high:+.3%}]"
                     f"{'  (worse beyond tolerance)' if c.worse_than_tolerance else ''}")
    if decision.comparisons:
        lines.append(f"  {'task average':<26} gain {decision.average_gain:+.3%} "
                     f"[{decision.average_low:+.3%}, {decision.average_high:+.3%}]")
    return "\n".join(lines)


# ---- grec predict ---------------------------------------------------------------------------------------
def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict", help="batch prediction of a registered model to Parquet (Ray Data)",
        description="Score every row of a split with Ray Data and write one Parquet file with the raw user and "
                    "item keys and one score_<task> column per task (probabilities, values or class "
                    "probabilities). The file is written under a temporary name and renamed when complete.",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME@ALIAS or models:/NAME/VERSION")
    _add_runtime(p)
    p.add_argument("--out", required=True, type=Path, metavar="FILE.parquet", help="output Parquet file")
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from jobs.predict import predict_to_parquet

    def work() -> int:
        summary = predict_to_parquet(args.model, args.data, args.out, split=args.split,
                                     tracking_uri=args.resolved_tracking_uri, address=args.address,
                                     options=_inference(args))
        print(f"wrote {summary.rows} predictions of {summary.model_name} version {summary.model_version} "
              f"to {summary.path} (columns: {', '.join(summary.columns)})")
        return 0

    return _run(args, work)


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
    _add_ray_inference(p, batch_size=64, batch_of="users per call")
    p.set_defaults(func=_recommend)


def _recommend(args: argparse.Namespace) -> int:
    from feature_store.online import default_online_store
    from jobs.recommend_batch import dataset_users, recommend_to_parquet

    def work() -> int:
        users = dataset_users(args.all_users) if args.all_users else [int(u) if u.lstrip("-").isdigit() else u
                                                                      for u in args.users]
        summary = recommend_to_parquet(args.model, users, str(args.online_store or default_online_store()), args.out,
                                       task=args.task, k=args.k, exclude_seen=not args.allow_seen,
                                       tracking_uri=args.resolved_tracking_uri, address=args.address,
                                       options=_inference(args))
        print(f"wrote {summary.rows} recommendations ({summary.users} users, top {args.k} for {summary.task!r}) of "
              f"{summary.model_name} version {summary.model_version} to {summary.path} in {summary.seconds:.0f} s")
        return 0

    return _run(args, work)
