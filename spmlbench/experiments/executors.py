"""Executors: where jobs are trained. ``local`` (in this process) is the default.

An executor takes one cohort of linear jobs (same data, batch size and epochs) and returns one
:class:`~spmlbench.train.result.TrainResult` per job. End-to-end jobs (modes ``e2e`` and
``linear-init``) train one at a time through :func:`train_image_job`. Scale-out over a cluster
lives in :mod:`spmlbench.experiments.ray_executor`, which calls the runner inside its workers.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from spmlbench.errors import ConfigError, LossError
from spmlbench.experiments.jobs import JobSpec
from spmlbench.train.configs import EpochProgress, LinearData, ProgressFn, ValHook
from spmlbench.train.linear import train_linear
from spmlbench.train.result import TrainResult


class Executor(Protocol):
    """Trains one cohort of jobs and returns their results in order."""

    def train(self, data: LinearData, jobs: Sequence[JobSpec], progress: ProgressFn | None = None) -> list[TrainResult]:
        """Train ``jobs`` on ``data``."""
        ...


class LocalExecutor:
    """Trains in this process (linear jobs on the CPU optionally in ``processes`` child processes):
    the batched linear trainer, or the reference loop."""

    def __init__(self, device: torch.device, reference_loop: bool = False, processes: int | None = 1) -> None:
        self.device = device
        self.reference_loop = reference_loop
        self.processes = processes  # linear jobs on the CPU: split each cohort over this many processes (None: auto)
        self._pool: Any = None  # worker processes (started by the first cohort that splits), kept until close()

    def close(self) -> None:
        """Stop the worker processes (if any were started)."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def train(self, data: LinearData, jobs: Sequence[JobSpec], progress: ProgressFn | None = None,
              on_val: ValHook | None = None) -> list[TrainResult]:
        """Train ``jobs`` (all mode ``linear``) on ``data``; ``on_val`` sees each epoch's val scores.

        A loss whose own code raises or gives a wrong shape (:class:`~spmlbench.errors.LossError`) fails
        its jobs with that one line; the cohort's other jobs are trained again without it (configs are
        independent: the same numbers) and finish.
        """
        broken: dict[str, LossError] = {}
        while True:
            keep = [i for i, j in enumerate(jobs) if j.loss not in broken]
            hook = None if on_val is None else (
                lambda e, idx, p, keep=keep: on_val(e, [keep[i] for i in idx], p))
            try:
                done = self._train(data, [jobs[i] for i in keep], progress, hook) if keep else []
                break
            except LossError as exc:
                if exc.loss in broken or exc.loss not in {jobs[i].loss for i in keep}:
                    raise
                broken[exc.loss] = exc
        out: list[TrainResult] = [TrainResult(status="failed", error=str(broken[j.loss])) if j.loss in broken
                                  else TrainResult() for j in jobs]
        for i, r in zip(keep, done):
            out[i] = r
        return out

    def _train(self, data: LinearData, jobs: Sequence[JobSpec], progress: ProgressFn | None = None,
               on_val: ValHook | None = None) -> list[TrainResult]:
        for job in jobs:
            if job.mode != "linear":
                raise ConfigError(f"--mode {job.mode}: not a linear job; the runner trains it with train_image_job")
        from spmlbench.heads import method_of

        own = [i for i, j in enumerate(jobs) if method_of(j.loss).linear_trainer()]  # methods with their own trainer
        if own:
            out: list[Any] = [None] * len(jobs)
            rest = [i for i in range(len(jobs)) if i not in own]
            if rest:  # the maps (a memory map) stay here: worker processes get the pooled features only
                plain = dataclasses.replace(data, maps=None)
                for i, r in zip(rest, self._train(plain, [jobs[i] for i in rest], progress, on_val)):
                    out[i] = r
            from spmlbench.train.trainers import trainer

            for i in own:
                fn = trainer(str(method_of(jobs[i].loss).linear_trainer()))
                out[i] = fn(data, jobs[i].train_config(), device=self.device, progress=progress)
            return out
        configs = [j.train_config() for j in jobs]
        if self.reference_loop:
            if on_val is not None:
                raise ConfigError("--reference-loop: prediction dumps need the batched trainer; drop --reference-loop")
            from spmlbench.train.reference import train_reference

            return train_reference(data, configs, device=self.device, progress=progress)
        if self.device.type != "cpu":
            return train_linear(data, configs, device=self.device, progress=progress, on_val=on_val)
        if self._pool is None and self.processes != 1:
            from spmlbench.train.parallel import WorkerPool, auto_size

            # workers start only when a cohort really splits (auto may keep a short one in-process)
            self._pool = WorkerPool(self.processes or auto_size())
        from spmlbench.train.parallel import train_linear_parallel

        return train_linear_parallel(data, configs, self.processes, device=self.device, progress=progress,
                                     on_val=on_val, pool=self._pool)


def train_image_job(
    job: JobSpec,
    *,
    workdir: str | os.PathLike[str],
    home: str | os.PathLike[str] | None = None,
    device: torch.device | str = "auto",
    workers: int | None = None,
    progress: ProgressFn | None = None,
) -> Any:
    """Train one end-to-end job (``e2e``: :func:`~spmlbench.train.e2e.train_e2e`; ``linear-init``:
    :func:`~spmlbench.train.linear_init.train_linear_init`) in ``workdir`` (resumes from its checkpoints).

    Returns the trainer's :class:`~spmlbench.train.result.TrainResult`; ``progress`` gets one
    :class:`EpochProgress` per epoch.
    """
    from spmlbench.experiments.recipes import job_recipes
    from spmlbench.train import e2e, linear_init

    if job.mode not in ("e2e", "linear-init"):
        raise ConfigError(f"--mode {job.mode}: train_image_job runs e2e and linear-init jobs only")
    recipe, linear_recipe = job_recipes(job)
    fn = e2e.train_e2e if linear_recipe is None else partial(linear_init.train_linear_init, linear_recipe=linear_recipe)

    def on_epoch_end(epoch: int, ctx: Any) -> None:
        if progress is None:
            return
        vals, best = ctx.history.get("val_map", []), int(ctx.history.get("best_epoch", 0))
        progress(EpochProgress(epoch, job.epochs, 1, float(vals[best - 1]) if best else float("nan")))

    return fn(job, recipe=recipe, home=home, device=device, workdir=Path(workdir), exact=job.exact, workers=workers,
              progress=False, image_size=job.image_size, weights=job.weights,
              hooks=e2e.Hooks(on_epoch_end=on_epoch_end))


def image_group_key(job: JobSpec) -> tuple[Any, ...] | None:
    """The lockstep group of an end-to-end job (:func:`spmlbench.train.lockstep.lockstep_key`), None when it
    trains alone."""
    from spmlbench.experiments.recipes import job_recipes
    from spmlbench.train.lockstep import lockstep_key

    if job.mode != "e2e":
        return None
    return lockstep_key(job, job_recipes(job)[0])


def train_image_group(
    jobs: list[JobSpec],
    *,
    workdirs: list[Path],
    home: str | os.PathLike[str] | None = None,
    device: torch.device | str = "auto",
    workers: int | None = None,
    processes: int | None = 1,
    progress: ProgressFn | None = None,
) -> list[Any]:
    """Train end-to-end jobs of one lockstep group together (:func:`spmlbench.train.lockstep.train_lockstep`);
    one result per job, each in its own work folder (resumable). ``processes``: on the CPU without ``exact``, the
    group's models over up to this many processes (None: one). ``progress`` gets one
    :class:`EpochProgress` per epoch of the group (its jobs in ``configs``, the best val mAP of any)."""
    from spmlbench.experiments.recipes import job_recipes
    from spmlbench.train.lockstep import train_lockstep

    recipes = [job_recipes(j)[0] for j in jobs]
    return train_lockstep(jobs, recipes, workdirs, home=home, device=device, exact=jobs[0].exact, workers=workers,
                          image_size=jobs[0].image_size, processes=processes, on_epoch=progress)
