"""Periodic embeddings of numeric features (Gorishniy et al., "On Embeddings for Numerical Features
in Tabular Deep Learning", NeurIPS 2022, the PLR variant).

A raw standardized scalar enters an MLP as one input, so the MLP can only cut it with the few
piecewise-linear kinks its first layer learns; trees on census-like tables win on exactly such
thresholds. Each feature x_i becomes [sin(2 pi c_i x_i), cos(2 pi c_i x_i)] with `frequencies`
trainable frequencies c_i (initialised from N(0, sigma)), then its own linear layer and a ReLU: an
`embedding_dim` vector per feature that can represent sharp, non-monotone responses."""

from __future__ import annotations

import math

import torch
from torch import nn

from grec.config import NumericConfig


class PeriodicNumericEmbedding(nn.Module):
    """[B, n] standardized numerics -> [B, n * embedding_dim]."""

    def __init__(self, num_features: int, frequencies: int, embedding_dim: int, sigma: float) -> None:
        super().__init__()
        self.frequencies = nn.Parameter(torch.randn(num_features, frequencies) * sigma)
        # One linear layer per feature, applied to all features at once as a batched matmul.
        bound = 1.0 / math.sqrt(2 * frequencies)
        self.weight = nn.Parameter(torch.empty(num_features, 2 * frequencies, embedding_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_features, embedding_dim).uniform_(-bound, bound))

    @property
    def output_width(self) -> int:
        return self.weight.shape[0] * self.weight.shape[2]

    def forward(self, numeric: torch.Tensor) -> torch.Tensor:
        angles = 2 * math.pi * numeric.unsqueeze(-1) * self.frequencies        # [B, n, k]
        periodic = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)   # [B, n, 2k]
        embedded = torch.einsum("bnk,nke->bne", periodic, self.weight) + self.bias
        return torch.relu(embedded).flatten(1)


class RawNumerics(nn.Module):
    """The standardized values as they are (no parameters: models saved before periodic embeddings
    existed keep their layout)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.output_width = num_features

    def forward(self, numeric: torch.Tensor) -> torch.Tensor:
        return numeric


def numeric_input(num_features: int, embedding_dim: int, config: NumericConfig) -> RawNumerics | PeriodicNumericEmbedding:
    """What an encoder token reads of its `num_features` numerics, as `config.encoding` says."""
    if config.encoding == "raw" or not num_features:
        return RawNumerics(num_features)
    return PeriodicNumericEmbedding(num_features, config.frequencies, embedding_dim, config.sigma)
