"""Which tasks a training step trains on (`losses.tasks_per_step`): a draw that depends on the seed and
the step only, and the loss scale that keeps the sampled loss unbiased."""

from __future__ import annotations

import random


def training_tasks(task_names: list[str], tasks_per_step: int | None, seed: int, step: int) -> tuple[list[str], float]:
    """The tasks to train on at `step` and the loss scale: all tasks and 1, or `tasks_per_step` K tasks
    drawn uniformly without replacement (in model order) and T / K. Every data-parallel rank draws
    the same tasks (and reduces the same gradients)."""
    if tasks_per_step is None or tasks_per_step >= len(task_names):
        return task_names, 1.0
    drawn = set(random.Random(f"{seed}:{step}").sample(range(len(task_names)), tasks_per_step))
    return [t for i, t in enumerate(task_names) if i in drawn], len(task_names) / tasks_per_step
