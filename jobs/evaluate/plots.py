"""PNG plots for the evaluation report (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written by batch jobs without a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def reliability_bins(labels: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean prediction, observed rate, rows) per equal-width probability bin that has rows."""
    from sklearn.calibration import calibration_curve

    observed, mean_pred = calibration_curve(labels, probabilities, n_bins=bins, strategy="uniform")
    # calibration_curve leaves empty bins out and does not count rows: count them the same way
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows = np.bincount(np.searchsorted(edges[1:-1], probabilities), minlength=bins)
    return mean_pred, observed, rows[rows > 0]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(task: str, labels: np.ndarray, scores: np.ndarray, auc: float, path: Path) -> Path:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
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
    from sklearn.metrics import confusion_matrix

    share = confusion_matrix(labels, np.argmax(probabilities, axis=1), labels=np.arange(probabilities.shape[1]),
                             normalize="true")
    share = np.nan_to_num(share)  # a class without rows has no share
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
