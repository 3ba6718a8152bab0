"""The large-table path: the model's `sparse_arch` sharded by torchrec's DistributedModelParallel
with a fused optimizer applied in backward, outside the DeepSpeed engine, which trains the rest.

Inside the engine the sparse part is replaced by `ShardedSparseInput`, which hands the engine the
embeddings the sharded module computed for the current batch: autograd carries the gradients back
through them into the sharded tables, whose fused optimizer updates them during backward.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from jobs.train.config import SparseSection

FUSED_OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "sgd": torch.optim.SGD, "adam": torch.optim.Adam}


class ShardedSparseInput(nn.Module):
    """Stands in for `model.sparse_arch` inside the DeepSpeed engine (it holds no parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self._pending: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None

    def feed(self, outputs: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]) -> None:
        self._pending = outputs

    def forward(self, categorical, sequences) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self._pending is None:
            raise RuntimeError("the sharded sparse module did not run for this batch (call feed() first)")
        outputs, self._pending = self._pending, None
        return outputs


def shard_sparse_arch(sparse_arch: nn.Module, sparse: SparseSection, device: torch.device) -> nn.Module:
    """DistributedModelParallel over `sparse_arch`: every table sharded (table-wise on CPU, where gloo
    rejects row-wise; the planner may also pick row- or column-wise on GPU), fused optimizer."""
    from torchrec.distributed import DistributedModelParallel
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
    from torchrec.distributed.types import ShardingType
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward

    apply_optimizer_in_backward(FUSED_OPTIMIZERS[sparse.optimizer], sparse_arch.parameters(), {"lr": sparse.lr})
    allowed = [ShardingType.TABLE_WISE.value]
    if device.type == "cuda":
        allowed += [ShardingType.ROW_WISE.value, ShardingType.COLUMN_WISE.value]
    tables = [name for name, _ in _table_names(sparse_arch)]
    constraints = {name: ParameterConstraints(sharding_types=allowed) for name in tables}
    sharders = [EmbeddingBagCollectionSharder(), EmbeddingCollectionSharder()]
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=dist.get_world_size(), compute_device=device.type),
                                       constraints=constraints)
    plan = planner.collective_plan(sparse_arch, sharders, dist.GroupMember.WORLD)
    return DistributedModelParallel(sparse_arch, device=device, plan=plan, sharders=sharders)


def _table_names(sparse_arch: nn.Module) -> list[tuple[str, int]]:
    names = []
    for module in sparse_arch.modules():
        configs = getattr(module, "embedding_bag_configs", None) or getattr(module, "embedding_configs", None)
        if configs is not None:
            names += [(c.name, c.num_embeddings) for c in configs()]
    return names


def save_sharded(sharded: nn.Module, path: Path) -> None:
    """Every rank writes its shards (tables and fused optimizer state) with torch.distributed.checkpoint."""
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": sharded.state_dict(), "optimizer": sharded.fused_optimizer.state_dict()}, checkpoint_id=str(path))


def load_sharded(sharded: nn.Module, path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    state = {"model": sharded.state_dict(), "optimizer": sharded.fused_optimizer.state_dict()}
    dcp.load(state, checkpoint_id=str(path))
    sharded.load_state_dict(state["model"])
    sharded.fused_optimizer.load_state_dict(state["optimizer"])


def load_unsharded_tables(sparse_arch: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """The full tables of a sharded checkpoint, in one process (DCP reshards on load), keyed as in
    `sparse_arch.state_dict()`."""
    import torch.distributed.checkpoint as dcp

    state = {"model": {k: v.clone() for k, v in sparse_arch.state_dict().items()}}
    dcp.load(state, checkpoint_id=str(path), no_dist=True)
    return state["model"]
