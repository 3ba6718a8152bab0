"""The run's figures (matplotlib, no display): loss curves, per-task validation metrics, the C-Poly
task x skill allocation heatmaps and the expert load per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def loss_curves(step_losses: Sequence[tuple[int, float]], history: Sequence[Mapping[str, Any]]) -> Figure:
    """Training loss per logged step, and train / validation loss per epoch."""
    figure, (steps_ax, epochs_ax) = plt.subplots(1, 2, figsize=(10, 4))
    if step_losses:
        steps, values = zip(*step_losses, strict=True)
        steps_ax.plot(steps, values, lw=1)
    steps_ax.set(title="training loss per step", xlabel="step", ylabel="loss")
    epochs = [h["epoch"] + 1 for h in history]
    for key in ("train/loss", "val/loss"):
        epochs_ax.plot(epochs, [h["metrics"].get(key, np.nan) for h in history], marker="o", label=key)
    epochs_ax.set(title="loss per epoch", xlabel="epoch")
    epochs_ax.legend()
    figure.tight_layout()
    return figure


def validation_metrics(history: Sequence[Mapping[str, Any]], tasks: Sequence[str]) -> Figure:
    """One panel per task: its validation metrics over epochs."""
    figure, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.5), squeeze=False)
    epochs = [h["epoch"] + 1 for h in history]
    for ax, task in zip(axes[0], tasks, strict=True):
        prefix = f"val/{task}/"
        names = sorted({k for h in history for k in h["metrics"] if k.startswith(prefix)})
        for name in names:
            ax.plot(epochs, [h["metrics"].get(name, np.nan) for h in history], marker="o", label=name[len(prefix):])
        ax.set(title=task, xlabel="epoch")
        ax.legend()
    figure.tight_layout()
    return figure


def allocation_heatmaps(matrices: Mapping[str, np.ndarray], tasks: Sequence[str]) -> Figure:
    """C-Poly: eval-time weight of each task-common skill per task, one heatmap per adapted layer."""
    names = list(matrices)
    figure, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names) + 1, 0.5 * len(tasks) + 2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        matrix = np.asarray(matrices[name])
        image = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set(title=name, xlabel="common skill", xticks=range(matrix.shape[1]))
        ax.set_yticks(range(len(tasks)), tasks)
        for (row, col), value in np.ndenumerate(matrix):
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8)
    return figure


def expert_load(load: Sequence[Sequence[float]], tasks: Sequence[str]) -> Figure:
    """Share of each task's routed sentences per expert (last validation pass)."""
    matrix = np.asarray(load)
    figure, ax = plt.subplots(figsize=(1.0 * matrix.shape[1] + 3, 0.5 * len(tasks) + 2))
    image = ax.imshow(matrix, vmin=0, vmax=1, cmap="magma", aspect="auto")
    ax.set(title="expert load per task (validation)", xlabel="expert", xticks=range(matrix.shape[1]))
    ax.set_yticks(range(len(tasks)), tasks)
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", color="w", fontsize=8)
    figure.colorbar(image, ax=ax)
    return figure
