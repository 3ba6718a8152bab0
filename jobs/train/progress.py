"""Progress from the workers to the driver: rank 0 posts to a small Ray actor, the driver polls it
and draws tqdm bars (epoch and step) and prints a summary line per epoch."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray

POLL_SECONDS = 0.5


@dataclass
class ProgressSnapshot:
    epoch: int = -1
    step: int = 0  # steps done in `epoch`
    loss: float | None = None
    epochs: list[dict[str, Any]] = field(default_factory=list)  # completed epochs' summaries, in order
    worker_pids: dict[int, int] = field(default_factory=dict)  # rank -> pid of its latest process
    starts_by_rank: dict[int, int] = field(default_factory=dict)  # rank -> processes started for it

    @property
    def group_failures(self) -> int:
        """Worker-group failures recovered so far: Ray Train restarts the whole group after one failure,
        so every rank starts once per group; one killed worker among N is one failure, not N restarts."""
        return max(self.starts_by_rank.values(), default=1) - 1


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Latest progress of a training run. Workers post with fire-and-forget calls."""

    def __init__(self) -> None:
        self.snapshot = ProgressSnapshot()

    def worker_started(self, rank: int, pid: int) -> None:
        self.snapshot.worker_pids[rank] = pid
        self.snapshot.starts_by_rank[rank] = self.snapshot.starts_by_rank.get(rank, 0) + 1

    def step(self, epoch: int, step: int, loss: float) -> None:
        self.snapshot.epoch, self.snapshot.step, self.snapshot.loss = epoch, step, loss

    def epoch_done(self, summary: dict[str, Any]) -> None:
        if all(e["epoch"] != summary["epoch"] for e in self.snapshot.epochs):  # a resumed epoch posts once
            self.snapshot.epochs.append(summary)

    def get(self) -> ProgressSnapshot:
        return self.snapshot


def summary_line(summary: dict[str, Any], epochs: int) -> str:
    """`epoch 2/5  train/loss 0.612  val/loss 0.580  val/like/auc 0.712 ...  (12.3 s, 4,100 samples/s, input wait 0%)`"""
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in summary["metrics"].items())
    flag = "  *best*" if summary.get("best") else ""
    pace = f"{summary['seconds']:.1f} s"
    if "samples_per_second" in summary:
        pace += f", {summary['samples_per_second']:,.0f} samples/s, input wait {summary['input_wait_fraction']:.0%}"
    return f"epoch {summary['epoch'] + 1}/{epochs}  {metrics}  ({pace}){flag}"


def watch(board: Any, done: threading.Event, epochs: int, steps_per_epoch: int, *, show: bool,
          listeners: tuple[Callable[[ProgressSnapshot], None], ...] = ()) -> None:
    """Polls `board` until `done` is set: updates the bars (when `show`), prints each epoch's
    summary line once, and passes every snapshot to `listeners`."""
    from tqdm.auto import tqdm

    show = show and sys.stderr.isatty()  # bars on a terminal only; elsewhere the epoch lines are the progress
    epoch_bar = tqdm(total=epochs, desc="epochs", unit="epoch", position=0, disable=not show)
    step_bar = tqdm(total=steps_per_epoch, desc="steps", unit="step", position=1, leave=False, disable=not show)
    printed, current_epoch = 0, None
    try:
        while True:
            finished = done.wait(POLL_SECONDS)
            snapshot = ray.get(board.get.remote())
            for listener in listeners:
                listener(snapshot)
            if snapshot.epoch != current_epoch:
                current_epoch = snapshot.epoch
                step_bar.reset(total=steps_per_epoch)
                step_bar.set_description(f"epoch {snapshot.epoch + 1}")
            step_bar.n = min(snapshot.step, steps_per_epoch)
            if snapshot.loss is not None:
                step_bar.set_postfix(loss=f"{snapshot.loss:.4f}", refresh=False)
            step_bar.refresh()
            for summary in snapshot.epochs[printed:]:
                tqdm.write(summary_line(summary, epochs))
                epoch_bar.update(1)
            printed = len(snapshot.epochs)
            if finished:
                return
    finally:
        step_bar.close()
        epoch_bar.close()
