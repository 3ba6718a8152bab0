"""The training checkpoint: what every rank writes, what rank 0 adds, and how a run resumes.

    CHECKPOINT/
      deepspeed/          engine.save_checkpoint (every rank: its ZeRO partitions)
      sparse/             sharded tables + fused optimizer state (DMP path; torch.distributed.checkpoint)
      rng/rank<r>.safetensors   each rank's torch random state (dropout, skill sampling, router jitter)
      trainer_state.json  epoch, step, early-stopping state and the per-epoch history (rank 0)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

DEEPSPEED_DIR = "deepspeed"
SPARSE_DIR = "sparse"
RNG_DIR = "rng"
STATE_FILE = "trainer_state.json"
DEEPSPEED_TAG = "state"


@dataclass
class TrainerState:
    """Where training is; saved with every checkpoint so a resumed run continues identically."""

    epoch: int = -1  # last completed epoch
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch

    def improved(self, value: float, mode: str, min_delta: float) -> bool:
        if math.isnan(value):
            return False
        if self.best_metric is None:
            return True
        return value < self.best_metric - min_delta if mode == "min" else value > self.best_metric + min_delta

    def save(self, directory: Path) -> None:
        (directory / STATE_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> TrainerState:
        return cls(**json.loads((Path(directory) / STATE_FILE).read_text()))


def save_rng(directory: Path, rank: int) -> None:
    (directory / RNG_DIR).mkdir(parents=True, exist_ok=True)
    save_file({"cpu": torch.get_rng_state()}, str(directory / RNG_DIR / f"rank{rank}.safetensors"))


def load_rng(directory: Path, rank: int) -> None:
    path = Path(directory) / RNG_DIR / f"rank{rank}.safetensors"
    if path.exists():
        torch.set_rng_state(load_file(str(path))["cpu"])
