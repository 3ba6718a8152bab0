"""Stable 64-bit hashing of key values.

Python's built-in `hash()` is salted per process, so it cannot place a key in the same bucket in
training and in serving. Every hash here is blake2b of the value's canonical text (`str(value)` for
integers and strings), identical across processes, machines and versions.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def stable_hash64(value: int | str) -> int:
    """The stable unsigned 64-bit hash of one integer or string value."""
    return int.from_bytes(hashlib.blake2b(str(value).encode("utf-8"), digest_size=8).digest(), "little")


def stable_hash64_array(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Stable hashes (uint64) of an integer or string array; null values hash to 0.

    Each distinct value is hashed once (dictionary encoding), so the cost follows the number of
    distinct values, not the number of rows.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if len(values) == 0:
        return np.zeros(0, dtype=np.uint64)
    encoded = pc.dictionary_encode(values)
    dictionary = encoded.dictionary.to_pylist()
    hashes = np.fromiter((stable_hash64(v) for v in dictionary), dtype=np.uint64, count=len(dictionary))
    indices = encoded.indices
    if indices.null_count:
        hashes = np.append(hashes, np.uint64(0))
        indices = pc.fill_null(indices, len(dictionary))
    return hashes[indices.to_numpy(zero_copy_only=False)]


def bucket_of(values: pa.Array | pa.ChunkedArray, num_buckets: int) -> np.ndarray:
    """The partition bucket (0..num_buckets-1, int32) of each key value."""
    return (stable_hash64_array(values) % np.uint64(num_buckets)).astype(np.int32)
