"""Parameter counting and matching parameter budgets across architectures."""

from __future__ import annotations

from torch import nn

from grec.config import GRecConfig
from grec.persistence import build_model


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def width_field(config: GRecConfig) -> str:
    """The width the budget helper scales: the bottom for Shared-Bottom, the experts otherwise."""
    return "baseline.bottom_hidden" if config.architecture == "shared_bottom" else "expert_hidden"


def with_width(config: GRecConfig, width: int) -> GRecConfig:
    if config.architecture == "shared_bottom":
        return config.replace(baseline=config.baseline.model_copy(update={"bottom_hidden": width}))
    return config.replace(expert_hidden=width)


def match_parameter_budget(config: GRecConfig, budget: int) -> GRecConfig:
    """`config` with its expert (or bottom) width set so its parameter count is as close to `budget`
    as the width allows. The count is affine in that width, so two builds find it."""
    def count(width: int) -> int:
        return count_parameters(build_model(with_width(config, width), pretrained_text=False))

    low, high = count(1), count(2)
    if budget < low:
        raise ValueError(f"budget {budget} is below the smallest {config.architecture} model ({low} parameters, "
                         f"{width_field(config)}=1)")
    return with_width(config, max(1, round(1 + (budget - low) / (high - low))))
