"""PNG plots for the evaluation report (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written by batch jobs without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def roc_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold, from (0, 0) to (1, 1)."""
    labels = np.asarray(labels) > 0.5
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="mergesort")
    sorted_scores = np.asarray(scores)[order]
    true_pos = np.cumsum(labels[order])
    false_pos = np.cumsum(~labels[order])
    # keep the last point of each run of equal scores: a threshold takes all tied rows at once
    last_of_run = np.r_[sorted_scores[1:] != sorted_scores[:-1], True]
    tpr = np.r_[0.0, true_pos[last_of_run] / max(true_pos[-1], 1)]
    fpr = np.r_[0.0, false_pos[last_of_run] / max(false_pos[-1], 1)]
    return fpr, tpr


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean prediction, observed rate, rows) per equal-width probability bin that has rows."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(probabilities, edges[1:-1]), 0, bins - 1)
    rows = np.bincount(index, minlength=bins)
    kept = rows > 0
    mean_pred = np.bincount(index, weights=probabilities, minlength=bins)[kept] / rows[kept]
    observed = np.bincount(index, weights=np.asarray(labels, dtype=np.float64), minlength=bins)[kept] / rows[kept]
    return mean_pred, observed, rows[kept]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(task: str, labels: np.ndarray, scores: np.ndarray, auc: float, path: Path) -> Path:
    fpr, tpr = roc_points(labels, scores)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot(fpr, tpr, label=f"AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC: {task}")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_reliability(task: str, labels: np.ndarray, probabilities: np.ndarray, path: Path) -> Path:
    mean_pred, observed, rows = reliability_bins(labels, probabilities)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=0.8, label="calibrated")
    ax.scatter(mean_pred, observed, s=10 + 90 * rows / rows.max(), label="bins (size = rows)")
    ax.plot(mean_pred, observed, linewidth=0.8)
    ax.set(xlabel="mean prediction", ylabel="observed positive rate", title=f"Calibration: {task}",
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left")
    return _save(fig, path)


def plot_regression(task: str, targets: np.ndarray, predictions: np.ndarray, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.hexbin(targets, predictions, gridsize=30, mincnt=1, cmap="viridis")
    low, high = float(min(targets.min(), predictions.min())), float(max(targets.max(), predictions.max()))
    ax.plot([low, high], [low, high], linestyle="--", color="grey", linewidth=0.8)
    ax.set(xlabel="target", ylabel="prediction", title=f"Predicted vs target: {task}")
    return _save(fig, path)


def plot_confusion(task: str, labels: np.ndarray, probabilities: np.ndarray, path: Path) -> Path:
    classes = probabilities.shape[1]
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(labels, dtype=np.int64), np.argmax(probabilities, axis=1)), 1)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class")
    ax.set(xlabel="predicted class", ylabel="true class", title=f"Confusion: {task}")
    return _save(fig, path)


def plot_slices(metric_by_task: Mapping[str, tuple[str, Mapping[str, float]]], path: Path) -> Path:
    """One panel per task: its primary metric (name, {slice: value}) per slice."""
    fig, axes = plt.subplots(1, len(metric_by_task), figsize=(4.2 * len(metric_by_task), 3.6), squeeze=False)
    for ax, (task, (metric, by_slice)) in zip(axes[0], metric_by_task.items(), strict=True):
        names = list(by_slice)
        ax.barh(names, [by_slice[n] for n in names])
        ax.invert_yaxis()
        ax.set(xlabel=metric, title=task)
    return _save(fig, path)
