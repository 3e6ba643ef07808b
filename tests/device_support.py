"""Tests that run on the CPU and, where a GPU is present, on CUDA: the devices to parametrize over, and a block
in which CUDA fails on any host synchronisation."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch

# the CPU run checks the logic in every CI run; the CUDA run (marked gpu, skipped without one) also the syncs
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@contextlib.contextmanager
def no_host_sync(device: str) -> Iterator[None]:
    """On CUDA: wait for the queued work, then make any host synchronisation in the block an error; on the CPU
    nothing (there is no device to wait for)."""
    if device != "cuda":
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")
