"""How a model's user-side tokens are compressed to be stored, and decompressed to be used.

A model's user side (`encode_user_tokens`: tokens [n, d] per user) is computed once per user by
`grec encode-users` and kept in the online store (feature_store.online.representations, which
stores and reads the arrays this module computes, and knows no model). Compression, per user:
- `int8`: each token vector is stored as int8 codes with its own float16 scale (grec.int8):
  n * d + 2 n bytes instead of 4 n d.
- `fp32`: the vectors as they are.
- either, after a low-rank projection (`rank` r < d): each token slot has a mean and an
  orthonormal basis [d, r] fitted on the encoded users (PCA, so the projection is learned from the
  data); the r coefficients are what is stored.

It lives in grec, beside the tokens it compresses and the int8 quantiser it shares with the
model's weights (grec imports no feature store, and the online store computes nothing); its callers
load grec anyway (the batch job holds the model, and serving's deployments import it). It is numpy
only, so decoding per request costs no tensor round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from grec.int8 import dequantize_rows, quantize_rows

Compression = Literal["int8", "fp32"]
COMPRESSIONS: tuple[str, ...] = ("int8", "fp32")


@dataclass(frozen=True)
class LowRankProjection:
    """Per token slot, a mean [n, d] and an orthonormal basis [n, d, r]: tokens ~= mean + c @ basis.T."""

    mean: np.ndarray
    basis: np.ndarray

    @property
    def rank(self) -> int:
        return self.basis.shape[-1]

    @classmethod
    def fit(cls, tokens: np.ndarray, rank: int) -> LowRankProjection:
        """PCA of each token slot over users: tokens [U, n, d] -> the top-`rank` directions."""
        users, slots, d = tokens.shape
        if not 1 <= rank < d:
            raise ValueError(f"rank must be in [1, {d}) for {d}-wide tokens, got {rank}")
        mean = tokens.mean(axis=0)
        basis = np.empty((slots, d, rank), dtype=np.float32)
        for slot in range(slots):
            _, _, vt = np.linalg.svd(tokens[:, slot] - mean[slot], full_matrices=False)
            basis[slot, :, : min(rank, vt.shape[0])] = vt[:rank].T
            basis[slot, :, vt.shape[0]:] = 0.0  # fewer users than the rank: the rest carries nothing
        return cls(mean.astype(np.float32), basis)

    def encode(self, tokens: np.ndarray) -> np.ndarray:
        """[..., n, d] -> coefficients [..., n, r]."""
        return np.einsum("...nd,ndr->...nr", tokens - self.mean, self.basis)

    def decode(self, coefficients: np.ndarray) -> np.ndarray:
        return self.mean + np.einsum("...nr,ndr->...nd", coefficients, self.basis)

    def explained_variance(self, tokens: np.ndarray) -> float:
        """Share of the tokens' variance around the mean the projection keeps (0..1)."""
        centred = tokens - self.mean
        total = float((centred ** 2).sum())
        kept = float((self.encode(tokens) ** 2).sum())
        return kept / total if total > 0 else 1.0


def projection_from(arrays: tuple[np.ndarray, np.ndarray] | None) -> LowRankProjection | None:
    """The projection whose (mean, basis) arrays a store kept; None for a version without one."""
    return None if arrays is None else LowRankProjection(*arrays)


def compress_tokens(tokens: np.ndarray, compression: Compression,
                    projection: LowRankProjection | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """tokens [..., n, d] float -> what is stored (see the module docstring): (values [..., n, w],
    scales [..., n] or None), w the projection's rank or d. `int8`: values are int8 codes with one
    float16 scale per vector; `fp32`: values are float32 and there are no scales."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {list(COMPRESSIONS)}, got {compression!r}")
    vectors = projection.encode(tokens) if projection is not None else tokens
    if compression == "int8":
        return quantize_rows(vectors, np.float16)
    return np.asarray(vectors, dtype=np.float32), None


def decompress_tokens(values: np.ndarray, scales: np.ndarray | None,
                      projection: LowRankProjection | None = None) -> np.ndarray:
    """What `compress_tokens` gave -> tokens [..., n, d] float32, contiguous."""
    vectors = values if scales is None else dequantize_rows(values, scales)
    tokens = projection.decode(vectors) if projection is not None else vectors
    return np.ascontiguousarray(tokens, dtype=np.float32)
