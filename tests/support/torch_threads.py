"""Run torch single-threaded inside a block (restoring the previous setting afterwards).

The test machines are small and shared: with every core busy, torch's two-thread kernels
spend their time waiting for each other (tiny matmuls measured 15x slower than with one
thread). Tests of small models gain nothing from intra-op threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_threaded_torch() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
