"""A training checkpoint -> a plain grec model in one process (no cluster): the fp32 weights of the
DeepSpeed engine (ZeRO partitions merged) plus, on the DMP path, the sharded tables (resharded by
torch.distributed.checkpoint)."""

from __future__ import annotations

import io
import logging
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch

from grec import MultiTaskModel, build_model
from jobs.train.checkpointing import DEEPSPEED_DIR, DEEPSPEED_TAG, SPARSE_DIR
from jobs.train.config import ResolvedConfig

SPARSE_PREFIX = "sparse_arch."

logger = logging.getLogger(__name__)


def engine_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The engine module's weights in fp32. ZeRO checkpoints (stage >= 1, or bf16, whose optimizer
    keeps fp32 master weights in ZeRO form) go through DeepSpeed's zero_to_fp32; a stage-0 fp32
    checkpoint holds the module whole."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    directory = Path(checkpoint_dir) / DEEPSPEED_DIR
    tag_dir = directory / DEEPSPEED_TAG
    if any(tag_dir.glob("*zero_pp_rank_*_optim_states.pt")):
        # zero_to_fp32 is a command-line script: it prints each step ("Processing zero checkpoint",
        # shapes, element counts) and draws "Loading checkpoint shards" bars. Kept out of the
        # terminal, and shown only if the merge fails.
        output = io.StringIO()
        try:
            with redirect_stdout(output), redirect_stderr(output):
                return get_fp32_state_dict_from_zero_checkpoint(str(directory), tag=DEEPSPEED_TAG)
        except Exception:
            logger.error("DeepSpeed's zero_to_fp32 failed on %s; its output:\n%s", directory, output.getvalue())
            raise
    # DeepSpeed's own checkpoint format is torch.save; it is this job's file, read back by this job.
    states = torch.load(tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    return {k: v.float() if v.is_floating_point() else v for k, v in states["module"].items()}


def model_from_checkpoint(checkpoint_dir: str | Path, resolved: ResolvedConfig) -> MultiTaskModel:
    """The trained model of a checkpoint, in eval mode."""
    from jobs.train.sharding import load_unsharded_tables

    checkpoint_dir = Path(checkpoint_dir)
    model = build_model(resolved.model_config)
    state = model.state_dict()
    loaded = engine_state_dict(checkpoint_dir)
    if resolved.sharded:
        tables = load_unsharded_tables(model.sparse_arch, checkpoint_dir / SPARSE_DIR)
        loaded.update({SPARSE_PREFIX + k: v for k, v in tables.items()})
    unknown = sorted(set(loaded) - set(state))
    if unknown:
        raise ValueError(f"{checkpoint_dir}: weights {unknown[:5]} do not belong to the configured model")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(loaded))
    if missing:
        raise ValueError(f"{checkpoint_dir}: trained weights {missing[:5]} are missing from the checkpoint")
    # Frozen weights (a frozen pretrained text encoder) and buffers keep their built values.
    state.update({k: v.to(state[k].dtype) for k, v in loaded.items()})
    model.load_state_dict(state, strict=True)
    return model.eval()
