"""Executors: where a batch of jobs is trained. ``local`` (in this process) is the default.

An executor takes one cohort of jobs (same data, batch size and epochs) and returns one
:class:`~spmlbench.train.linear.ConfigResult` per job; a ray executor can plug in later.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from spmlbench.errors import ConfigError
from spmlbench.experiments.jobs import JobSpec
from spmlbench.train.linear import ConfigResult, LinearData, ProgressFn, train_linear


class Executor(Protocol):
    """Trains one cohort of jobs and returns their results in order."""

    def train(self, data: LinearData, jobs: Sequence[JobSpec], progress: ProgressFn | None = None) -> list[ConfigResult]:
        """Train ``jobs`` on ``data``."""
        ...


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a ConfigError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ConfigError(f"--device {device!r}: unknown; choose auto, cpu or cuda")
    return torch.device(device)


class LocalExecutor:
    """Trains in this process: the batched linear trainer, or the reference loop."""

    def __init__(self, device: torch.device, reference_loop: bool = False) -> None:
        self.device = device
        self.reference_loop = reference_loop

    def train(self, data: LinearData, jobs: Sequence[JobSpec], progress: ProgressFn | None = None) -> list[ConfigResult]:
        """Train ``jobs`` (all mode ``linear``) on ``data``."""
        for job in jobs:
            if job.mode != "linear":
                raise ConfigError(f"--mode {job.mode}: not yet available (end-to-end modes come with their own "
                                  "command); use --mode linear")
        configs = [j.train_config() for j in jobs]
        if self.reference_loop:
            from spmlbench.train.reference import train_reference

            return train_reference(data, configs, device=self.device, progress=progress)
        return train_linear(data, configs, device=self.device, progress=progress)
