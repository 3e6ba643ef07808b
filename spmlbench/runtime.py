"""Where and how training runs: device resolution, device labels, CUDA backend flags, decode workers and
intra-op threads. One place for each rule; used by features, train and experiments."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from spmlbench.errors import ConfigError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unknown name or a CUDA device this machine lacks is a
    ConfigError naming the choices."""
    text = str(device)
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text not in ("cpu", "cuda") and not text.startswith("cuda:"):
        raise ConfigError(f"--device {text!r}: unknown device; use auto, cpu or cuda")
    index = text[5:]
    if index and not (index.isascii() and index.isdigit()):
        raise ConfigError(f"--device {text!r}: the GPU index must be a whole number, e.g. cuda:0")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {text}: no CUDA device is available; use --device cpu or auto")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"cuda:0 to cuda:{torch.cuda.device_count() - 1}; choose one of them, cpu or auto")
    return torch.device(text)


def device_label(device: torch.device) -> str:
    """The device as caches and records name it: ``cpu`` or ``cuda (NVIDIA H100 80GB HBM3)``."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def precision_label(device: torch.device, exact: bool) -> str:
    """``bf16-autocast+channels_last`` on CUDA unless ``exact``; ``fp32`` otherwise."""
    return "bf16-autocast+channels_last" if device.type == "cuda" and not exact else "fp32"


@contextlib.contextmanager
def backend_flags(device: torch.device, exact: bool) -> Iterator[None]:
    """CUDA only: cuDNN autotuning and TF32 for the fast path; deterministic cuDNN, no TF32 when ``exact``
    (the reference numerics). Restored afterwards."""
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = (cudnn.benchmark, cudnn.deterministic, matmul.allow_tf32, cudnn.allow_tf32)
    try:
        cudnn.benchmark, cudnn.deterministic = not exact, exact
        matmul.allow_tf32 = cudnn.allow_tf32 = not exact
        yield
    finally:
        cudnn.benchmark, cudnn.deterministic, matmul.allow_tf32, cudnn.allow_tf32 = saved


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device: torch.device) -> int:
    """Image decode workers: most cores on CUDA (decoding is the bottleneck), few on CPU (compute shares them)."""
    cpus = available_cpus()
    if device.type == "cuda":
        return max(1, min(16, cpus - 1))
    return min(4, cpus // 4)


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None: unchanged); the previous count is restored."""
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
