"""Hands the memory the process has freed back to the system: the heap's free pages (glibc's
malloc_trim, where the C library has it) and what Arrow's memory pool keeps for reuse.

glibc returns freed memory to the system only from the top of its heap: pages freed below something
still held stay in the RSS and are not reused by the large (mmapped) arrays and tensors that come
next. evaluate's top-N replay ranks block after block of users, each block's candidate tables of
another shape: without this its RSS grew by about 11 MB a block of 256 users (5,233 users: +350 MB)
although nothing it holds grows. build-index's fit (recommend.fit) calls it between its phases.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache

import pyarrow as pa


@cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    library = ctypes.CDLL(name) if name else None
    return getattr(library, "malloc_trim", None)


def release_freed_heap() -> None:
    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
