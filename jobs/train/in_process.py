"""A few optimizer steps in this process, without Ray or DeepSpeed.

For quick fixtures and benchmark set-ups that need a trained (not a good) model fast; real training
goes through `run_training`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch


def train_steps(model: torch.nn.Module, columns: pa.Table, *, steps: int, batch_size: int, lr: float,
                seed: int) -> torch.nn.Module:
    """Adam on `steps` random batches of `columns` (transformed rows); returns the model in eval mode.
    `seed` fixes the batches and torch's draws (sampled negatives, skill allocations, dropout), so a
    fixture trains the same model every time; the caller's random state is left as it was."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    size = min(batch_size, columns.num_rows)
    model.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            batch = model.collate_labelled(columns.take(pa.array(rng.choice(columns.num_rows, size, replace=False))))
            loss, _ = model.loss(model(batch), batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()
