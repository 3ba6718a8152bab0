"""DeepSpeed for one training worker: the engine config from the job config, and initialization
inside the Ray Train worker (Ray has already set up the process group)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from jobs.train.config import TrainConfig

DS_OPTIMIZERS = {"adamw": "AdamW", "adam": "Adam", "sgd": "SGD"}


def deepspeed_config(config: TrainConfig, world_size: int) -> dict[str, Any]:
    """ZeRO stage, precision, gradient accumulation and clipping, the optimizer: from the config."""
    ds, opt = config.deepspeed, config.optimizer
    micro = config.training.batch_size
    params: dict[str, Any] = {"lr": opt.lr, "weight_decay": opt.weight_decay}
    if opt.name != "sgd":
        params.update(betas=list(opt.betas), eps=opt.eps)
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    return {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "train_batch_size": micro * ds.gradient_accumulation_steps * world_size,
        "gradient_clipping": ds.gradient_clipping,
        "zero_optimization": zero,
        "bf16": {"enabled": ds.precision == "bf16"},
        "optimizer": {"type": DS_OPTIMIZERS[opt.name], "params": params},
        "steps_per_print": 2**31 - 1,  # progress is the job's, not DeepSpeed's
        "zero_allow_untested_optimizer": True,
    }


def export_distributed_env(rank: int, local_rank: int, world_size: int) -> None:
    """DeepSpeed reads these (or tries MPI); Ray Train sets MASTER_ADDR/PORT itself."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size))


class _KeyedTensorOutputFilter(logging.Filter):
    """Drops ZeRO-3's warning about torchrec's KeyedTensor outputs. It is harmless here: the
    collections returning them own no parameters, and the modules that own the tables (one
    EmbeddingBag per table) return plain tensors, which ZeRO-3 tracks. Other types still warn."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "KeyedTensor" not in record.getMessage()


_KEYED_TENSOR_FILTER = _KeyedTensorOutputFilter()


def use_interpreter_ninja() -> None:
    """Puts this interpreter's bin directory first on PATH. DeepSpeed loads its C++ ops through the
    `ninja` it finds there; scripts/setup.sh built them with the venv's, and a ninja of another
    version (the system's) reads that build log as changed commands and rebuilds every op (30-60 s
    each), in every process that does not run from an activated venv."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if path.split(os.pathsep)[0] != bin_dir:
        os.environ["PATH"] = bin_dir + os.pathsep + path


def initialize_engine(module: nn.Module, config: TrainConfig, world_size: int):
    """deepspeed.initialize over the module's trainable parameters; returns the engine."""
    use_interpreter_ninja()
    import deepspeed
    from deepspeed.utils import logger as deepspeed_logger

    deepspeed_logger.addFilter(_KEYED_TENSOR_FILTER)  # once per process: the same filter
    trainable = [p for p in module.parameters() if p.requires_grad]
    engine, _, _, _ = deepspeed.initialize(model=module, model_parameters=trainable,
                                           config=deepspeed_config(config, world_size))
    return engine


def engine_dtype(config: TrainConfig) -> torch.dtype:
    return torch.bfloat16 if config.deepspeed.precision == "bf16" else torch.float32
