"""Where and how training runs: device resolution, device labels, CUDA backend flags, decode workers and
intra-op threads, and the setup of spawned worker processes. One place for each rule; used by features, train
and experiments."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import signal
import threading
import time
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
    """CUDA: cuDNN autotuning and TF32 for the fast path; deterministic cuDNN, no TF32 when ``exact`` (the
    reference numerics). CPU: denormals flushed (:func:`flush_denormals`). Restored afterwards."""
    if device.type != "cuda":
        with flush_denormals(device):
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


def flushes_denormals() -> bool:
    """Whether this thread's CPU arithmetic flushes denormal floats to zero now (a probe: 1e-39 x 1)."""
    return float(torch.tensor([1e-39]).mul(1.0)[0]) == 0.0


@contextlib.contextmanager
def flush_denormals(device: torch.device | str = "cpu") -> Iterator[None]:
    """CPU training flushes denormal floats to zero (FTZ/DAZ) for the block; the previous mode is restored.

    Adam's moments of entries whose gradient stays zero (ROLE's untouched label-matrix rows, head weights of
    features that are 0 in a batch) decay by beta^t and reach the denormal range (below 1.2e-38) after about
    800 steps, where x86 arithmetic runs 10-15x slower (torch's fused Adam over COCO's 65,665 x 80 label
    matrix: 5.8 ms -> 81 ms per step). Flushed, such a moment is 0 instead of < 1.2e-38; the parameters move by
    less than 1e-30 of their value either way, so they come out the same. No effect on CUDA.
    """
    if torch.device(device).type != "cpu" or flushes_denormals():
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device: torch.device, asked: int | None = None) -> int:
    """Image decode workers: ``asked`` when given, else most cores on CUDA (decoding is the bottleneck), few on
    CPU (compute shares them)."""
    if asked is not None:
        return int(asked)
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


PARENT_CHECK_S = 1.0  # how often a spawned worker checks that its caller is alive


def worker_setup(parent: int) -> None:
    """Setup of a spawned worker process: Ctrl-C is left to the caller (it terminates its workers), and a worker
    whose caller died (kill -9) exits within :data:`PARENT_CHECK_S` instead of training on as an orphan."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(parent,), name="spmlbench-parent-watch", daemon=True).start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def terminate_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Stop a process pool's workers now, mid-task (after an error or an interrupt in their caller)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public API before Python 3.14
    for proc in processes:
        proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
    for proc in processes:
        proc.join(timeout=5)
