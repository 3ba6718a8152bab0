"""The training checkpoint: what every rank writes, what rank 0 adds, and how a run resumes
(`SkipLoggedSteps`: a resumed run does not log again the steps the interrupted one logged).

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
from collections.abc import Mapping
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


class SkipLoggedSteps:
    """Wraps the MLflow logger of a resumed run: each metric is logged only at steps after the last
    one the interrupted run logged for it. The resumed run replays the interrupted epoch with the
    same batches and random state, so those steps were logged already (MLflow would keep both)."""

    def __init__(self, log: Any) -> None:
        self.log = log  # a registry.tracking.RankZeroLogger
        self.last_step: dict[str, int] = {}

    def _last(self, key: str) -> int:
        if key not in self.last_step:  # one history read per metric per resumed run
            history = self.log.client.get_metric_history(self.log.run_id, key)
            self.last_step[key] = max((m.step for m in history), default=-1)
        return self.last_step[key]

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.log.enabled:
            self.log.log_metrics({k: v for k, v in metrics.items() if step > self._last(k)}, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log, name)
