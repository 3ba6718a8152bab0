"""The evaluation report: report.md, evaluation.json and PNG plots in one directory."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jobs.evaluate import plots
from jobs.metrics import PRIMARY_METRIC
from jobs.evaluate.recommend import recommend_markdown
from jobs.evaluate.results import Estimate, EvaluationResult

REPORT_FILE = "report.md"
RESULT_FILE = "evaluation.json"
PLOTS_DIR = "plots"


@dataclass(frozen=True)
class TaskPredictions:
    """Labels and predictions of one task over the evaluated rows (probabilities for binary,
    values for regression, [rows, classes] probabilities for multiclass)."""

    labels: np.ndarray
    predictions: np.ndarray


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def _interval(estimate: Estimate) -> str:
    if math.isnan(estimate.low):
        return "n/a"
    return f"[{estimate.low:.4f}, {estimate.high:.4f}]"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def summary_table(result: EvaluationResult) -> list[str]:
    """One line per task: its primary metric and the others, with intervals (Markdown rows)."""
    rows = []
    for task in result.tasks:
        for name, estimate in task.metrics.items():
            rows.append([task.name, task.kind, task.role, str(task.rows), name, _fmt(estimate.value),
                         _interval(estimate)])
    return _table(["task", "kind", "role", "rows", "metric", "value", "CI"], rows)


def _write_plots(result: EvaluationResult, predictions: Mapping[str, TaskPredictions], plot_dir: Path) -> list[Path]:
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for task in result.tasks:
        pred = predictions.get(task.name)
        if pred is None or len(pred.labels) == 0:
            continue
        if task.kind == "binary":
            if not math.isnan(task.metrics["auc"].value):
                written.append(plots.plot_roc(task.name, pred.labels, pred.predictions, task.metrics["auc"].value,
                                              plot_dir / f"roc_{task.name}.png"))
            written.append(plots.plot_reliability(task.name, pred.labels, pred.predictions,
                                                  plot_dir / f"calibration_{task.name}.png"))
        elif task.kind == "regression":
            written.append(plots.plot_regression(task.name, pred.labels, pred.predictions,
                                                 plot_dir / f"regression_{task.name}.png"))
        else:
            written.append(plots.plot_confusion(task.name, pred.labels, pred.predictions,
                                                plot_dir / f"confusion_{task.name}.png"))
    slice_panels = {}
    for task in result.tasks:
        metric = PRIMARY_METRIC[task.kind]
        values = {name: m[metric] for name, m in task.slices.items() if not math.isnan(m.get(metric, math.nan))}
        if values:
            slice_panels[task.name] = (metric, values)
    if slice_panels:
        written.append(plots.plot_slices(slice_panels, plot_dir / "slices.png"))
    return written


def render_markdown(result: EvaluationResult, plot_files: list[Path], out_dir: Path) -> str:
    settings = result.settings
    lines = [
        f"# Evaluation of `{result.model_uri}`",
        "",
        f"Model **{result.model_name}** version **{result.model_version}**, dataset **{result.dataset}**, "
        f"split **{result.split}** ({result.rows} rows).",
        f"Intervals: {settings.get('confidence', 0.95):.0%} percentile bootstrap, "
        f"{settings.get('resamples', 0)} resamples (rows; users for GAUC and ranking).",
        *(f"Skipped: {reason}." for reason in (settings.get("skipped") or {}).values()),
        *([f"Sampled: {settings['held_rows']}."] if settings.get("held_rows") else []),
        "",
        "## Metrics per task",
        "",
        *summary_table(result),
        "",
    ]
    ranked = [t for t in result.tasks if t.ranking]
    if ranked:
        names = list(ranked[0].ranking)
        lines += [
            "## Ranking (leave-last-out per user)",
            "",
            f"Each user's last {result.split} interaction (a positive one, for binary tasks) is ranked against "
            f"{settings.get('negatives', '?')} items the user never interacted with, sampled uniformly; "
            "HR@k is the share ranked in the top k, NDCG@k discounts by log2 of the position.",
            "",
            *_table(["task", "users", *names],
                    [[t.name, str(t.ranking_users),
                      *[f"{_fmt(t.ranking[n].value)} {_interval(t.ranking[n])}" for n in names]] for t in ranked]),
            "",
        ]
    lines += recommend_markdown(result.recommend)
    sliced = [t for t in result.tasks if t.slices]
    if sliced:
        lines += ["## Slices", "",
                  "New users have no row in the train split; activity buckets split returning users by "
                  "their number of train rows (quantiles).", ""]
        for task in sliced:
            metric_names = [m for m in next(iter(task.slices.values())) if m != "rows"]
            lines += [f"### {task.name}", "",
                      *_table(["slice", "rows", *metric_names],
                              [[name, str(int(values["rows"])), *[_fmt(values.get(m, math.nan)) for m in metric_names]]
                               for name, values in task.slices.items()]),
                      ""]
    if plot_files:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.relative_to(out_dir).as_posix()})" for p in plot_files]
        lines.append("")
    return "\n".join(lines)


def write_report(result: EvaluationResult, predictions: Mapping[str, TaskPredictions], out_dir: str | Path) -> Path:
    """Writes report.md, evaluation.json and plots/ into `out_dir`; returns the report path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_files = _write_plots(result, predictions, out / PLOTS_DIR)
    (out / RESULT_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    report = out / REPORT_FILE
    report.write_text(render_markdown(result, plot_files, out))
    return report
