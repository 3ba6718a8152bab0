"""`grec promote` and `grec seal`: the registry commands that decide and certify versions. The
promotion gate (jobs/registry/promote.py) moves the champion alias on evidence; seal records the
manifest of a version registered before grec recorded them (registry.models.seal_version)."""

from __future__ import annotations

import argparse

# Light at import (the standard library only): `grec --help` builds this parser.
from jobs.options import add_scored_split, add_tracking_uri, inference_options, with_tracking_uri
from jobs.registry.promote import PromotionOutcome, PromotionPolicy, promote


def register(subparsers: argparse._SubParsersAction) -> None:
    _add_promote(subparsers)
    _add_seal(subparsers)


# ---- the promotion policy (grec promote, grec evaluate --promote) ---------------------------------------
def add_policy_options(p: argparse.ArgumentParser) -> None:
    """The promotion gate's policy: what the challenger must show to take the champion alias."""
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


def policy_from_args(args: argparse.Namespace) -> PromotionPolicy:
    """The policy `add_policy_options`' options and the command's --seed describe."""
    metrics = {}
    for item in args.primary_metric:
        kind, sep, metric = item.partition("=")
        if not sep:
            raise ValueError(f"--primary-metric {item!r}: expected KIND=METRIC, e.g. binary=gauc")
        metrics[kind.strip()] = metric.strip()
    return PromotionPolicy(tolerance=args.tolerance, min_average_gain=args.min_average_gain, primary_metrics=metrics,
                           resamples=args.promotion_resamples, confidence=args.promotion_confidence, seed=args.seed)


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
    add_scored_split(p)
    add_policy_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.set_defaults(func=_promote)


def _promote(args: argparse.Namespace) -> int:
    def work() -> int:
        print(format_promotion(promote(args.name, args.data, policy_from_args(args), split=args.split,
                                       tracking_uri=args.resolved_tracking_uri, address=args.address,
                                       inference=inference_options(args))))
        return 0

    return with_tracking_uri(args, work)


def format_promotion(outcome: PromotionOutcome) -> str:
    """The gate's decision, per task and on average, as the terminal shows it."""
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



# ---- grec seal ------------------------------------------------------------------------------------------
def _add_seal(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "seal", help="record the sha256 of every file of a version registered without a manifest",
        description="Versions registered by this grec carry a manifest of their files (sha256 and size of each, a "
                    "model version tag) that every load checks. A version registered before has none: it loads "
                    "with a warning, and is refused under --require-integrity. This records its manifest, and its "
                    "retrieval index's, from the files as the artifact store holds them now: seal only a version "
                    "whose store you trust. A manifest already recorded is never replaced.",
    )
    p.add_argument("--model", required=True, metavar="URI", help="models:/NAME/VERSION or models:/NAME@ALIAS")
    add_tracking_uri(p)
    p.set_defaults(func=_seal)


def _seal(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from registry.models import seal_version
    from registry.tracking import use_tracking_uri

    with use_tracking_uri(args.tracking_uri):
        try:
            sealed = seal_version(args.model)
        except MlflowException as err:  # e.g. a version that does not exist: bad input, not a crash
            raise ValueError(f"cannot read {args.model} from the MLflow registry: {err.message}") from None
    what = f"model {sealed.name} version {sealed.version}"
    if sealed.model is None and sealed.retrieval_index is None:
        print(f"grec seal: {what} and its retrieval index (if any) already have manifests; nothing recorded")
        return 0
    for part, manifest in (("files", sealed.model), ("retrieval index files", sealed.retrieval_index)):
        if manifest is not None:
            size = sum(f.size for f in manifest.files.values())
            print(f"grec seal: {what}: recorded the sha256 of its {len(manifest.files)} {part} ({size} bytes)")
    return 0
