"""The GPU path: two training processes on two GPUs (NCCL) with DeepSpeed ZeRO-2 and ZeRO-3 in bf16,
and torchrec's DistributedModelParallel sharding the tables on GPUs. Skipped, with the reason, on
machines without two CUDA devices (the CPU suite covers the same code on gloo)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def _two_gpus() -> None:
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA GPUs and the CUDA install (README: GPU install); this machine has "
                    f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}")


@pytest.mark.parametrize("stage", [2, 3])
def test_zero_in_bf16_on_two_gpus(stage, train_tiny_config, ray_local, tiny_movielens, tmp_path):
    _two_gpus()
    from jobs.train import run_training

    config = train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path}/m.db", sparse={"mode": "engine"},
                               deepspeed={"zero_stage": stage, "precision": "bf16"},
                               scaling={"use_gpu": True, "num_workers": 2},
                               mlflow={"registered_model": f"grec-gpu-zero{stage}"})
    result = run_training(config, show_progress=False)
    assert result.epochs_run == 2 and 0.0 <= result.metrics["val/like/auc"] <= 1.0


def test_dmp_shards_tables_on_two_gpus(train_tiny_config, ray_local, tiny_movielens, tmp_path):
    _two_gpus()
    from mlflow import MlflowClient

    from jobs.train import run_training

    config = train_tiny_config(tiny_movielens.root, f"sqlite:///{tmp_path}/m.db", sparse={"mode": "dmp"},
                               deepspeed={"zero_stage": 2, "precision": "bf16"}, training={"epochs": 1},
                               scaling={"use_gpu": True, "num_workers": 2},
                               mlflow={"registered_model": "grec-gpu-dmp"})
    result = run_training(config, show_progress=False)
    assert MlflowClient(f"sqlite:///{tmp_path}/m.db").get_run(result.run_id).data.params["sparse.path"] == "dmp"
