"""The training job: DeepSpeed inside Ray Train workers, data streamed through Ray Data, tracked
and registered in MLflow. Entry points: `run_training(config)` and `grec train --config FILE` (cli.py).

Names are imported on first use: Ray worker processes that only need a light submodule (the
progress actor, the data transform) do not pay for importing torch, DeepSpeed and the model.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "jobs.train.config", "TrainConfig": "jobs.train.config", "load_config": "jobs.train.config",
    "parse_config": "jobs.train.config", "resolve": "jobs.train.config",
    "TrainingResult": "jobs.train.job", "run_training": "jobs.train.job",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jobs.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
