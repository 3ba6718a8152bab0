"""infra/'s training configs train the tested model: every key of each equals the tested config's
(configs/movielens_grec.yaml, which tests/test_quality_configs.py trains) except the overrides a
cluster or a GPU run needs, listed here. A model or training key changed in one file and not the
other fails, naming the key."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import REPO_ROOT

TESTED = REPO_ROOT / "configs" / "movielens_grec.yaml"
# Where the data and checkpoints are (every node reads the object store) and how many workers of what.
CLUSTER_OVERRIDES = {"dataset.path", "scaling.num_workers", "scaling.cpus_per_worker", "scaling.storage_path"}
# ... and on GPUs, the ZeRO stage and bf16 the file is for.
GPU_OVERRIDES = CLUSTER_OVERRIDES | {"scaling.use_gpu", "deepspeed.zero_stage", "deepspeed.precision"}
DERIVED = {"movielens_cluster.yaml": CLUSTER_OVERRIDES, "movielens_gpu_zero2_bf16.yaml": GPU_OVERRIDES,
           "movielens_gpu_zero3_bf16.yaml": GPU_OVERRIDES}


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize("name", sorted(DERIVED))
def test_an_infra_config_is_the_tested_config_plus_its_overrides(name):
    from jobs.train.config import load_config

    tested = _flat(load_config(TESTED).model_dump())
    derived = _flat(load_config(REPO_ROOT / "infra" / "configs" / name).model_dump())
    differing = sorted(key for key in tested.keys() | derived.keys() if tested.get(key) != derived.get(key))
    unexpected = {key: (tested.get(key), derived.get(key)) for key in differing if key not in DERIVED[name]}
    assert not unexpected, f"infra/configs/{name} differs from {TESTED.name} in (tested, infra): {unexpected}"
