"""What a multi-task model's forward pass returns (`ModelOutput`): every requested task's logits and
head input, and the router's auxiliary losses and statistics."""

from __future__ import annotations

from typing import NamedTuple

import torch

from grec.router import RouterStats


class ModelOutput(NamedTuple):
    """logits[task]: [B] (binary, regression) or [B, C] (multiclass); a multiclass task trained with
    sampled softmax has no logits in training mode (only `hidden`). hidden[task]: the head input.
    A NamedTuple (see `grec.router.Routing`)."""

    logits: dict[str, torch.Tensor]
    hidden: dict[str, torch.Tensor]
    aux_losses: dict[str, torch.Tensor]
    router_stats: RouterStats | None = None
