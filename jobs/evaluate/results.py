"""What an evaluation produces, as plain data that round-trips through JSON (evaluation.json)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Estimate:
    """A metric value with its bootstrap interval (NaN bounds when none was computed)."""

    value: float
    low: float = math.nan
    high: float = math.nan


@dataclass
class TaskEvaluation:
    name: str
    kind: str
    role: str
    rows: int
    metrics: dict[str, Estimate]
    # slice name -> {"rows": n, metric: value}
    slices: dict[str, dict[str, float]] = field(default_factory=dict)
    # "hr@10", "ndcg@10", ... over leave-last-out users; empty when the task kind has no ranking
    ranking: dict[str, Estimate] = field(default_factory=dict)
    ranking_users: int = 0


@dataclass
class EvaluationResult:
    model_uri: str
    model_name: str
    model_version: str
    dataset: str
    split: str
    rows: int
    tasks: list[TaskEvaluation]
    settings: dict[str, Any] = field(default_factory=dict)
    # the /v1/recommend replay (jobs/evaluate/recommend.py); empty when it did not run
    recommend: dict[str, Any] = field(default_factory=dict)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: str) -> TaskEvaluation:
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(f"no evaluation for task {name!r}; evaluated tasks: {self.task_names}")

    def flat_metrics(self, prefix: str = "") -> dict[str, float]:
        """`<prefix><task>_<metric>` -> value for every defined overall and ranking metric (MLflow keys
        allow letters, digits and _-./ only, so '@' becomes '_at_')."""
        flat: dict[str, float] = {}
        for task in self.tasks:
            for name, estimate in {**task.metrics, **task.ranking}.items():
                if not math.isnan(estimate.value):
                    flat[f"{prefix}{task.name}_{name.replace('@', '_at_')}"] = estimate.value
        for system, metrics in self.recommend.get("systems", {}).items():
            for name, value in metrics.items():
                flat[f"{prefix}recommend_{system.replace('+', '_')}_{name.replace('@', '_at_')}"] = value
        return flat

    def to_dict(self) -> dict[str, Any]:
        return non_finite_as_null(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluationResult:
        tasks = [
            TaskEvaluation(
                name=t["name"], kind=t["kind"], role=t["role"], rows=t["rows"],
                metrics={k: _estimate(v) for k, v in t["metrics"].items()},
                slices={k: {m: _number(x) for m, x in v.items()} for k, v in t["slices"].items()},
                ranking={k: _estimate(v) for k, v in t["ranking"].items()},
                ranking_users=t["ranking_users"],
            )
            for t in data["tasks"]
        ]
        return cls(model_uri=data["model_uri"], model_name=data["model_name"], model_version=data["model_version"],
                   dataset=data["dataset"], split=data["split"], rows=data["rows"], tasks=tasks,
                   settings=dict(data.get("settings") or {}), recommend=dict(data.get("recommend") or {}))


def non_finite_as_null(value: Any) -> Any:
    """`value` with every NaN or infinite float, in dicts, lists and tuples too, written as null
    (JSON has neither; Python's json would write `NaN` / `Infinity`, which other readers refuse)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: non_finite_as_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [non_finite_as_null(v) for v in value]
    return value


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _estimate(data: dict[str, Any]) -> Estimate:
    return Estimate(_number(data["value"]), _number(data["low"]), _number(data["high"]))
