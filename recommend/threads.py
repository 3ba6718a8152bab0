"""One torch thread for the recommendation path's small operations, restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to `count` inside the block. The path's tensors are small (a
    block of users times a catalogue): with two OpenMP threads on a busy 2-core machine each op
    spin-waits for the other thread (a next-item fit: 9.8 CPU s on two threads, 0.3 s on one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
