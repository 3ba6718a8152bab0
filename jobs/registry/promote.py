"""The promotion gate: the challenger takes the champion alias only on evidence.

Both models score the same rows (one split of one prepared dataset). Per task the primary metric
(AUC for binary, RMSE for regression, accuracy for multiclass, unless configured) gives the
challenger's gain over the champion, relative to the champion's value and oriented so that positive
is better. A paired bootstrap resamples the rows (the same resampled indices for both models, so
the noise the two share cancels) and gives a percentile interval of every task's gain and of the
task average. The challenger is promoted only when

- the interval of the task-average gain lies above `min_average_gain` (default 0), and
- no task's interval lies below -`tolerance` (a task confidently worse than the tolerance),

so a challenger better only by noise keeps the champion out. The decision, the intervals and the
sample counts go to the challenger's MLflow run (tags, metrics, promotion.json); the first model
becomes champion when there is none.

This module imports only the standard library at import time (the `grec` command reads the
policy's defaults to build its help); numpy, the metrics, scoring and MLflow are imported where
they run.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from jobs.evaluate.inference import InferenceOptions
    from jobs.evaluate.job import ScoredSplit

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PromotionPolicy:
    """How much evidence promotion needs. Gains are relative to the champion's value."""

    tolerance: float = 0.005
    min_average_gain: float = 0.0
    # task kind -> metric judged (must be an ordering metric of that kind); unset kinds: PRIMARY_METRIC
    primary_metrics: Mapping[str, str] = field(default_factory=dict)
    resamples: int = 500  # paired bootstrap draws (about 20 s for 10k rows and two AUC tasks on one core)
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        from jobs.metrics import PRIMARY_METRIC, TASK_METRICS

        if not (self.tolerance >= 0.0 and math.isfinite(self.tolerance)):
            raise ValueError(f"tolerance must be a finite number >= 0 (a relative loss, 0.005 = 0.5%), got {self.tolerance}")
        if not math.isfinite(self.min_average_gain):
            raise ValueError(f"min_average_gain must be finite, got {self.min_average_gain}")
        if self.resamples < 100:
            raise ValueError(f"resamples must be >= 100 for a percentile interval, got {self.resamples}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        merged = {**PRIMARY_METRIC, **dict(self.primary_metrics)}
        for kind, name in merged.items():
            if kind not in TASK_METRICS:
                raise ValueError(f"primary metric given for unknown task kind {kind!r}; kinds: {sorted(TASK_METRICS)}")
            allowed = sorted(m.name for m in TASK_METRICS[kind] if m.higher_is_better is not None)
            allowed += ["gauc"] if kind == "binary" else []
            if name not in allowed:
                raise ValueError(f"primary metric {name!r} for {kind} tasks is not one of {sorted(allowed)}")
        object.__setattr__(self, "primary_metrics", merged)


@dataclass(frozen=True)
class PairedTask:
    """One task's labels and both models' predictions on the same rows (`rows` index the shared
    rows that carry the task's label; `users` are their user keys, for GAUC)."""

    name: str
    kind: str
    rows: np.ndarray
    labels: np.ndarray
    champion: np.ndarray
    challenger: np.ndarray
    users: np.ndarray | None = None


@dataclass(frozen=True)
class TaskComparison:
    task: str
    metric: str
    champion: float
    challenger: float
    gain: float  # relative, positive = challenger better, on all rows
    gain_low: float  # the paired-bootstrap interval of the gain
    gain_high: float
    rows: int
    worse_than_tolerance: bool  # the whole interval lies below -tolerance


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    average_gain: float = math.nan
    average_low: float = math.nan
    average_high: float = math.nan
    comparisons: tuple[TaskComparison, ...] = ()
    rows: int = 0  # shared rows resampled
    resamples: int = 0
    confidence: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["comparisons"] = [asdict(c) for c in self.comparisons]
        return data


def relative_gain(champion: float, challenger: float, higher_is_better: bool) -> float:
    """(challenger - champion) / |champion|, sign flipped for lower-is-better metrics; the plain
    difference when the champion's value is 0."""
    delta = challenger - champion if higher_is_better else champion - challenger
    return delta / abs(champion) if champion != 0 else delta


def _score_function(kind: str, name: str, users: np.ndarray | None):
    """(labels, predictions, row positions) -> the metric on those rows."""
    from jobs.metrics import gauc, metric

    if name == "gauc":
        if users is None:
            raise ValueError("the primary metric gauc needs user keys, and the scored rows have none")
        return lambda labels, predictions, at: gauc(users[at], labels[at], predictions[at])
    score = metric(kind, name).score
    return lambda labels, predictions, at: score(labels[at], predictions[at])


def compare(tasks: Sequence[PairedTask], rows: int, policy: PromotionPolicy) -> PromotionDecision:
    """The decision for a challenger against a champion scored on the same `rows` shared rows."""
    import numpy as np

    from jobs.evaluate.bootstrap import bootstrap_intervals
    from jobs.metrics import HIGHER_IS_BETTER

    judged = []  # (task, metric name, score function, champion value, challenger value)
    for task in tasks:
        name = policy.primary_metrics[task.kind]
        score = _score_function(task.kind, name, task.users)
        everything = np.arange(len(task.rows))
        old, new = score(task.labels, task.champion, everything), score(task.labels, task.challenger, everything)
        if math.isnan(old):
            continue  # the champion has no defined value: nothing to lose on this task
        if math.isnan(new):
            return PromotionDecision(False, f"task {task.name!r}: the challenger's {name} is undefined")
        judged.append((task, name, score, old, new))
    if not judged:
        return PromotionDecision(False, "no task has a defined metric for both models")
    # Position of each shared row within each task's labeled rows (-1: not labeled for it).
    positions = []
    for task, *_ in judged:
        position = np.full(rows, -1)
        position[task.rows] = np.arange(len(task.rows))
        positions.append(position)

    def gains(indices: np.ndarray) -> np.ndarray:
        """Every task's gain and their average, on one resample of the shared rows."""
        values = []
        for (task, name, score, _, _), position in zip(judged, positions, strict=True):
            at = position[indices]
            at = at[at >= 0]
            values.append(relative_gain(score(task.labels, task.champion, at), score(task.labels, task.challenger, at),
                                        HIGHER_IS_BETTER[name]))
        return np.array([*values, np.mean(values)])

    low, high = bootstrap_intervals(gains, rows, resamples=policy.resamples, confidence=policy.confidence,
                                    seed=policy.seed)
    comparisons = []
    for index, (task, name, _, old, new) in enumerate(judged):
        gain = relative_gain(old, new, HIGHER_IS_BETTER[name])
        comparisons.append(TaskComparison(task.name, name, old, new, gain, float(low[index]), float(high[index]),
                                          len(task.rows), bool(high[index] < -policy.tolerance)))
    average = float(np.mean([c.gain for c in comparisons]))
    evidence = dict(average_gain=average, average_low=float(low[-1]), average_high=float(high[-1]),
                    comparisons=tuple(comparisons), rows=rows, resamples=policy.resamples,
                    confidence=policy.confidence)
    if any(math.isnan(c.gain_low) for c in comparisons) or math.isnan(evidence["average_low"]):
        return PromotionDecision(False, "the gain is undefined in some resamples (a task with one class in a "
                                        "resample?): no interval, no promotion", **evidence)
    interval = f"{policy.confidence:.0%} interval"
    worse = [c for c in comparisons if c.worse_than_tolerance]
    if worse:
        detail = ", ".join(f"{c.task} {c.metric} {c.champion:.4f} -> {c.challenger:.4f} "
                           f"(gain {c.gain:+.2%}, {interval} [{c.gain_low:+.2%}, {c.gain_high:+.2%}])" for c in worse)
        return PromotionDecision(False, f"tasks worse than the tolerance of {policy.tolerance:.2%}: {detail}",
                                 **evidence)
    if not evidence["average_low"] > policy.min_average_gain:
        return PromotionDecision(
            False, f"the task-average gain {average:+.3%} ({interval} [{evidence['average_low']:+.3%}, "
                   f"{evidence['average_high']:+.3%}]) does not lie above {policy.min_average_gain:+.3%}: "
                   "the challenger may be better by noise only", **evidence)
    return PromotionDecision(
        True, f"task-average gain {average:+.3%} ({interval} [{evidence['average_low']:+.3%}, "
              f"{evidence['average_high']:+.3%}]) and no task worse than {policy.tolerance:.2%}", **evidence)


def paired_tasks(champion: ScoredSplit, challenger: ScoredSplit) -> tuple[list[PairedTask], int]:
    """The champion's tasks with both models' scores on the same rows, and the number of rows.
    Raises ValueError when the two were scored on different rows or the challenger lacks a task."""
    from jobs.evaluate.job import row_keys

    keys = row_keys(champion.model.spec)
    if champion.split != challenger.split or not champion.rows.select(keys).equals(challenger.rows.select(keys)):
        raise ValueError(f"champion and challenger were scored on different rows ({champion.split}, "
                         f"{champion.rows.num_rows} rows vs {challenger.split}, {challenger.rows.num_rows} rows)")
    user_key = champion.model.spec.user_id
    users = champion.rows.column(user_key).to_numpy(zero_copy_only=False) if user_key else None
    challenger_tasks = {t.name: t for t in challenger.model.spec.tasks}
    paired = []
    for task in champion.model.spec.tasks:
        if task.implicit:  # every labelled row is a positive: no pointwise gain to measure (top-N judges it)
            continue
        other = challenger_tasks.get(task.name)
        if other is None or other.kind != task.kind:
            raise ValueError(f"the challenger does not serve the champion's task {task.name!r} ({task.kind})")
        rows, labels, old = champion.task_arrays(task)
        _, _, new = challenger.task_arrays(task)
        paired.append(PairedTask(task.name, task.kind, rows, labels, old, new,
                                 None if users is None else users[rows]))
    return paired, champion.rows.num_rows


class PromotionError(ValueError):
    """Promotion cannot run: no such registered model, or no challenger."""


@dataclass(frozen=True)
class PromotionOutcome:
    decision: PromotionDecision
    challenger_version: str
    previous_champion: str | None
    champion: str | None  # the champion version after the decision
    split: str


def _alias_version(client, name: str, alias: str) -> str | None:
    """The version `alias` names, or None when the alias is not set."""
    from registry.models import resolve_version

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
            challenger_scores: ScoredSplit | None = None) -> PromotionOutcome:
    """Scores the challenger and the champion of `name` on the same split and moves the champion
    alias when `policy` allows. Both models are checked against the data before Ray starts (or is
    joined at `address`). `challenger_scores` (from `grec evaluate` of the same version and split)
    saves scoring the challenger twice."""
    from mlflow.tracking import MlflowClient

    from jobs.evaluate.inference import InferenceOptions
    from jobs.evaluate.job import prepare_evaluation, score_split
    from jobs.ray_runtime import ray_session
    from registry.models import CHALLENGER, CHAMPION, set_alias
    from registry.tracking import named_tracking_uri

    with named_tracking_uri(tracking_uri):
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
            logger.info("promotion of %s: %s", name, decision.reason)
            return PromotionOutcome(decision, challenger, champion, champion, split)
        if champion is None:
            decision = PromotionDecision(True, f"{name} has no champion yet: the challenger becomes champion")
        else:
            scored: dict[str, ScoredSplit] = {}
            if challenger_scores is not None and challenger_scores.model.version == challenger \
                    and challenger_scores.split == split:
                scored[challenger] = challenger_scores
            checked = {v: prepare_evaluation(f"models:/{name}/{v}", data_dir, split)
                       for v in (challenger, champion) if v not in scored}
            with ray_session(address):
                for version, (model, prepared) in checked.items():
                    scored[version] = score_split(model, prepared, split, tracking_uri, inference or InferenceOptions())
            tasks, rows = paired_tasks(scored[champion], scored[challenger])
            decision = compare(tasks, rows, policy)
        if decision.promote:
            set_alias(name, CHAMPION, challenger, client)
        outcome = PromotionOutcome(decision, challenger, champion, challenger if decision.promote else champion, split)
        record_decision(client, name, outcome, policy)
        logger.info("promotion of %s version %s: %s (%s)", name, challenger,
                    "promoted" if decision.promote else "kept out", decision.reason)
        return outcome


def record_decision(client, name: str, outcome: PromotionOutcome, policy: PromotionPolicy) -> None:
    """Tags, metrics and promotion.json on the challenger's run; the decision tag on its version."""
    from jobs.evaluate.results import non_finite_as_null

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
    client.set_tag(run_id, "promotion.split", outcome.split)
    metrics = {"promotion_rows": decision.rows, "promotion_resamples": decision.resamples,
               "promotion_confidence": decision.confidence, "promotion_average_gain": decision.average_gain,
               "promotion_average_gain_low": decision.average_low, "promotion_average_gain_high": decision.average_high}
    for c in decision.comparisons:
        metrics.update({f"promotion_gain_{c.task}": c.gain, f"promotion_gain_{c.task}_low": c.gain_low,
                        f"promotion_gain_{c.task}_high": c.gain_high, f"promotion_rows_{c.task}": c.rows})
    for key, value in metrics.items():
        if math.isfinite(value):
            client.log_metric(run_id, key, float(value))
    evidence = {
        "model": name, "challenger_version": version, "split": outcome.split,
        "champion_before": outcome.previous_champion, "champion_after": outcome.champion,
        "policy": {"tolerance": policy.tolerance, "min_average_gain": policy.min_average_gain,
                   "primary_metrics": dict(policy.primary_metrics), "resamples": policy.resamples,
                   "confidence": policy.confidence, "seed": policy.seed},
        "decision": decision.to_dict(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "promotion.json"
        path.write_text(json.dumps(non_finite_as_null(evidence), indent=2) + "\n")
        client.log_artifact(run_id, str(path), artifact_path="promotion")
