"""The promotion gate: the challenger takes the champion alias only on evidence.

Both models are scored on the same split of the same prepared dataset. Per task the primary metric
(AUC for binary, RMSE for regression, accuracy for multiclass, unless configured) is compared as a
relative gain, oriented so that positive is better. The challenger is promoted when no task loses
more than `tolerance` and the mean gain over the compared tasks exceeds `min_average_gain`. The
decision and its evidence go to the challenger's MLflow run (tags, metrics, promotion.json); the
first model becomes champion when there is none.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jobs.evaluate.compute import PRIMARY_METRIC, ROW_METRICS
from jobs.evaluate.inference import InferenceOptions
from jobs.evaluate.job import EvaluationConfig, prepare_evaluation, run_evaluation
from jobs.evaluate.metrics import HIGHER_IS_BETTER
from jobs.evaluate.results import EvaluationResult
from jobs.ray_runtime import ray_session
from registry.models import CHALLENGER, CHAMPION, resolve_version, set_alias

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class PromotionPolicy:
    """How much evidence promotion needs. Gains are relative to the champion's value."""

    tolerance: float = 0.005
    min_average_gain: float = 0.0
    # task kind -> metric judged (must be an ordering metric of that kind)
    primary_metrics: Mapping[str, str] = field(default_factory=lambda: dict(PRIMARY_METRIC))

    def __post_init__(self) -> None:
        if not (self.tolerance >= 0.0 and math.isfinite(self.tolerance)):
            raise ValueError(f"tolerance must be a finite number >= 0 (a relative loss, 0.005 = 0.5%), got {self.tolerance}")
        if not math.isfinite(self.min_average_gain):
            raise ValueError(f"min_average_gain must be finite, got {self.min_average_gain}")
        merged = {**PRIMARY_METRIC, **dict(self.primary_metrics)}
        for kind, metric in merged.items():
            if kind not in ROW_METRICS:
                raise ValueError(f"primary metric given for unknown task kind {kind!r}; kinds: {sorted(ROW_METRICS)}")
            allowed = sorted(m for m in (*ROW_METRICS[kind], *(["gauc"] if kind == "binary" else []))
                             if m in HIGHER_IS_BETTER)
            if metric not in allowed:
                raise ValueError(f"primary metric {metric!r} for {kind} tasks is not one of {allowed}")
        object.__setattr__(self, "primary_metrics", merged)


@dataclass(frozen=True)
class TaskComparison:
    task: str
    metric: str
    champion: float
    challenger: float
    gain: float  # relative, positive = challenger better
    within_tolerance: bool


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    average_gain: float = math.nan
    comparisons: tuple[TaskComparison, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["comparisons"] = [asdict(c) for c in self.comparisons]
        return data


def relative_gain(champion: float, challenger: float, higher_is_better: bool) -> float:
    """(challenger - champion) / |champion|, sign flipped for lower-is-better metrics; the plain
    difference when the champion's value is 0."""
    delta = challenger - champion if higher_is_better else champion - challenger
    return delta / abs(champion) if champion != 0 else delta


def compare(champion: EvaluationResult, challenger: EvaluationResult, policy: PromotionPolicy) -> PromotionDecision:
    """The decision for a challenger against a champion evaluated on the same rows."""
    if (champion.dataset, champion.split, champion.rows) != (challenger.dataset, challenger.split, challenger.rows):
        raise ValueError(
            f"champion and challenger were evaluated on different data: {champion.dataset}/{champion.split} "
            f"({champion.rows} rows) vs {challenger.dataset}/{challenger.split} ({challenger.rows} rows)"
        )
    dropped = [t for t in champion.task_names if t not in challenger.task_names]
    if dropped:
        return PromotionDecision(False, f"the challenger does not serve the champion's tasks {dropped}")
    comparisons = []
    for task in champion.tasks:
        new = challenger.task(task.name)
        if new.kind != task.kind:
            return PromotionDecision(False, f"task {task.name!r} is {new.kind} for the challenger but {task.kind} "
                                            f"for the champion")
        metric = policy.primary_metrics[task.kind]
        old_value, new_value = task.metrics[metric].value, new.metrics[metric].value
        if math.isnan(old_value):
            continue  # the champion has no defined value: nothing to lose on this task
        if math.isnan(new_value):
            return PromotionDecision(False, f"task {task.name!r}: the challenger's {metric} is undefined")
        gain = relative_gain(old_value, new_value, HIGHER_IS_BETTER[metric])
        comparisons.append(TaskComparison(task.name, metric, old_value, new_value, gain, gain >= -policy.tolerance))
    if not comparisons:
        return PromotionDecision(False, "no task has a defined metric for both models")
    average = sum(c.gain for c in comparisons) / len(comparisons)
    worse = [c for c in comparisons if not c.within_tolerance]
    if worse:
        detail = ", ".join(f"{c.task} {c.metric} {c.champion:.4f} -> {c.challenger:.4f} ({c.gain:+.2%})" for c in worse)
        return PromotionDecision(False, f"tasks worse than the tolerance of {policy.tolerance:.2%}: {detail}",
                                 average, tuple(comparisons))
    if not average > policy.min_average_gain:
        return PromotionDecision(False, f"the task-average gain {average:+.3%} does not exceed the required "
                                        f"{policy.min_average_gain:+.3%}", average, tuple(comparisons))
    return PromotionDecision(True, f"no task worse than {policy.tolerance:.2%} and task-average gain {average:+.3%}",
                             average, tuple(comparisons))


class PromotionError(ValueError):
    """Promotion cannot run: no such registered model, or no challenger."""


@dataclass(frozen=True)
class PromotionOutcome:
    decision: PromotionDecision
    challenger_version: str
    previous_champion: str | None
    champion: str | None  # the champion version after the decision
    challenger_result: EvaluationResult | None  # None when it already was the champion (nothing scored)
    champion_result: EvaluationResult | None


def _alias_version(client, name: str, alias: str) -> str | None:
    """The version `alias` names, or None when the alias is not set."""
    try:
        return resolve_version(f"models:/{name}@{alias}", client)[1]
    except ValueError:
        return None


def _require_model(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            raise PromotionError(f"there is no registered model named {name!r} in the MLflow registry at "
                                 f"{client.tracking_uri}; train and register one first (grec train)") from None
        raise


def promote(name: str, data_dir: str | Path, policy: PromotionPolicy | None = None, *, split: str = "test",
            tracking_uri: str | None = None, address: str | None = None, inference: InferenceOptions | None = None,
            challenger_result: EvaluationResult | None = None) -> PromotionOutcome:
    """Evaluates the challenger and the champion of `name` on the same split and moves the champion
    alias when `policy` allows. Both models are checked against the data before Ray starts (or is
    joined at `address`). `challenger_result` (from a full `grec evaluate` of the same version and
    split) saves scoring the challenger twice."""
    from mlflow.tracking import MlflowClient

    policy = policy or PromotionPolicy()
    client = MlflowClient()
    _require_model(client, name)
    challenger = _alias_version(client, name, CHALLENGER)
    if challenger is None:
        raise PromotionError(f"registered model {name!r} has no {CHALLENGER!r} alias: nothing to promote; "
                             "training sets it on the version it registers (grec train)")
    champion = _alias_version(client, name, CHAMPION)
    if champion == challenger:
        decision = PromotionDecision(False, f"version {challenger} is already the champion")
        outcome = PromotionOutcome(decision, challenger, champion, champion, challenger_result, None)
        logger.info("promotion of %s: %s", name, decision.reason)
        return outcome
    config = EvaluationConfig(split=split, inference=inference or InferenceOptions())
    results: dict[str, EvaluationResult] = {}
    if challenger_result is not None and challenger_result.model_version == challenger \
            and challenger_result.split == split:
        results[challenger] = challenger_result
    to_score = [v for v in (challenger, champion) if v is not None and v not in results]
    checked = {v: prepare_evaluation(f"models:/{name}/{v}", data_dir, split) for v in to_score}
    if checked:
        with ray_session(address):
            for version, (model, prepared) in checked.items():
                results[version] = run_evaluation(model, prepared, config, tracking_uri=tracking_uri, full=False).result
    champion_result = results.get(champion) if champion else None
    if champion is None:
        decision = PromotionDecision(True, f"{name} has no champion yet: the first evaluated model becomes champion")
    else:
        decision = compare(champion_result, results[challenger], policy)
    if decision.promote:
        set_alias(name, CHAMPION, challenger, client)
    outcome = PromotionOutcome(decision, challenger, champion, challenger if decision.promote else champion,
                               results[challenger], champion_result)
    record_decision(client, name, outcome, policy)
    logger.info("promotion of %s version %s: %s (%s)", name, challenger,
                "promoted" if decision.promote else "kept out", decision.reason)
    return outcome


def record_decision(client, name: str, outcome: PromotionOutcome, policy: PromotionPolicy) -> None:
    """Tags, metrics and promotion.json on the challenger's run; the decision tag on its version."""
    decision = outcome.decision
    verdict = "promoted" if decision.promote else "rejected"
    version = outcome.challenger_version
    client.set_model_version_tag(name, version, "promotion", verdict)
    run_id = client.get_model_version(name, version).run_id
    if not run_id:
        logger.warning("%s version %s has no run: the decision is recorded on the version only", name, version)
        return
    client.set_tag(run_id, "promotion.decision", verdict)
    client.set_tag(run_id, "promotion.reason", decision.reason[:5000])
    client.set_tag(run_id, "promotion.champion_before", outcome.previous_champion or "none")
    if not math.isnan(decision.average_gain):
        client.log_metric(run_id, "promotion_average_gain", decision.average_gain)
    for comparison in decision.comparisons:
        client.log_metric(run_id, f"promotion_gain_{comparison.task}", comparison.gain)
    evidence = {
        "model": name, "challenger_version": outcome.challenger_version,
        "champion_before": outcome.previous_champion, "champion_after": outcome.champion,
        "policy": {"tolerance": policy.tolerance, "min_average_gain": policy.min_average_gain,
                   "primary_metrics": dict(policy.primary_metrics)},
        "decision": decision.to_dict(),
        "challenger_evaluation": outcome.challenger_result.to_dict() if outcome.challenger_result else None,
        "champion_evaluation": outcome.champion_result.to_dict() if outcome.champion_result else None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "promotion.json"
        path.write_text(json.dumps(_finite(evidence), indent=2) + "\n")
        client.log_artifact(run_id, str(path), artifact_path="promotion")


def _finite(value: Any) -> Any:
    """JSON has no NaN: write undefined numbers as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
