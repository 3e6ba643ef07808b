"""Lockstep end-to-end training: the jobs that share their batch order train together on one input pipeline.

Matched seeds mean that every loss of one seed sees the same images in the same order with the same flips
(:func:`spmlbench.train.seeding.epoch_orders`, :class:`spmlbench.train.images.EpochBatchSampler`, the flip hash
of (seed, epoch, row)). :func:`train_lockstep` decodes, resizes and flips each training batch once, moves it
to the device once and prepares it once, then lets every job's model take its step on it, each with its own
loss, head, optimiser, lr groups, schedule, early stop and best state; a job that stops early drops out. The
models share the device one after another on one stream. Each job keeps its own work folder: checkpoints after
every epoch, so a killed group resumes every job from its own last epoch (a job behind the others catches up
first, alone).

Who can join (:func:`lockstep_key`): mode ``e2e`` jobs of a plain method (the linear head with a loss, no
trainer of its own, no per-batch features): a method with its own head (BoostLU, MIME, SMILE) runs apart. Jobs join when they agree on dataset, seed, protocol seeds, backbone and weights, image size,
batch size, eval batch size and numerics; their epoch counts may differ (the orders of the first epochs are the
same stream). On the CPU the numbers equal separate runs bit for bit (the same kernels on the same inputs);
the global RNG of each job is kept apart (seeded with the job's seed, as :func:`spmlbench.train.e2e.train_e2e`
does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from spmlbench.runtime import backend_flags, resolve_device
from spmlbench.errors import LossError, SpmlError
from spmlbench.train.e2e import StepFn, failed_result, job_settings, load_cached_result, save_result
from spmlbench.train.e2e_data import backbone_and_weights
from spmlbench.train.e2e_job import (
    JobState,
    begin_epoch,
    end_epoch,
    finish_job,
    prepare_input,
    setup_job,
    start_epoch,
    train_step,
)
from spmlbench.train.e2e_recipe import E2ERecipe
from spmlbench.train.hooks import Hooks
from spmlbench.train.result import TrainResult


def can_join(job: Any) -> bool:
    """Whether a job trains the plain linear head with an ordinary loss (lockstep is exact for it)."""
    from spmlbench.heads import method_of
    from spmlbench.losses import LOSSES

    batched = LOSSES.get(job.loss).resolve("batched")
    return job.mode == "e2e" and method_of(job.loss).plain and not bool(getattr(batched, "needs_features", False))


def lockstep_key(job: Any, recipe: E2ERecipe) -> tuple[Any, ...] | None:
    """The group a job trains in lockstep with (None: it trains alone)."""
    if not can_join(job):
        return None
    return (job.dataset, job.seed, job.label_seed, job.split_seed, job.backbone, job.weights, job.image_size,
            bool(job.exact), recipe.batch_size, recipe.eval_batch_size)


@dataclasses.dataclass
class _Member:
    index: int
    state: JobState
    rng: torch.Tensor
    settings: dict[str, Any]
    fingerprint: str
    workdir: Path


@contextlib.contextmanager
def _own_rng(member: _Member) -> Iterator[None]:
    """Run with the member's global RNG stream (saved back after), the caller's restored."""
    outer = torch.get_rng_state()
    torch.set_rng_state(member.rng)
    try:
        yield
    finally:
        member.rng = torch.get_rng_state()
        torch.set_rng_state(outer)


def train_lockstep(jobs: Sequence[Any], recipes: Sequence[E2ERecipe], workdirs: Sequence[str | Path], *,
                   home: Any = None, device: str | torch.device = "auto", exact: bool = False,
                   workers: int | None = None, progress: StepFn | None = None,
                   image_size: int | None = None) -> list[TrainResult]:
    """Train ``jobs`` (one :func:`lockstep_key`) together; one :class:`TrainResult` per job, in order. A job
    whose training raises becomes a failed result; the others go on. ``image_size``: default the jobs' own
    (else the backbone's)."""
    dev = resolve_device(device)
    results: list[TrainResult | None] = [None] * len(jobs)
    members: list[_Member] = []
    with backend_flags(dev, exact):
        for i, (job, recipe, wd) in enumerate(zip(jobs, recipes, workdirs)):
            wd = Path(wd)
            wd.mkdir(parents=True, exist_ok=True)
            backbone, weights = backbone_and_weights(job, None)
            size = image_size if image_size is not None else job.image_size
            settings, fp = job_settings(job, recipe, dev, exact, backbone, weights, size, linear_init=False)
            cached = load_cached_result(wd, fp)
            if cached is not None:
                results[i] = cached
                continue
            rng = torch.Generator().manual_seed(int(job.seed)).get_state()
            member = _Member(i, None, rng, settings, fp, wd)  # type: ignore[arg-type]
            history: dict[str, Any] = {"val_map": [], "train_loss": [], "train_s": [], "best_epoch": 0,
                                       "stopped": False, "wall_s": 0.0}
            try:
                with _own_rng(member):
                    member.state = setup_job(
                        job, home=home, dev=dev, workdir=wd, exact=exact, workers=workers, progress=None,
                        init_head=None, init_loss_state=None, recipe=recipe, backbone=backbone, weights=weights,
                        image_size=size, labels=None, hooks=Hooks(), fingerprint=fp, history=history,
                        settings=settings)
            except LossError as exc:  # the loss's own code raised while it was built: this job fails alone
                results[i] = failed_result(history, dev, settings, str(exc))
                continue
            members.append(member)
        _epochs(members, results, progress)
        for m in members:
            if results[m.index] is None:
                with _own_rng(m):
                    results[m.index] = _guard(m, lambda m=m: finish_job(m.state))
                save_result(m.workdir, m.fingerprint, results[m.index])
    return [r for r in results if r is not None]


def _guard(member: _Member, fn: Any) -> Any:
    """``fn()``, or a failed result for this member (its history so far) when it raises (a user error other
    than the loss's own, :class:`~spmlbench.errors.LossError`, stops the group)."""
    try:
        return fn()
    except LossError as exc:
        return failed_result(member.state.history, member.state.run.device, member.settings, str(exc))
    except SpmlError:
        raise
    except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the group
        return failed_result(member.state.history, member.state.run.device, member.settings,
                             f"{type(exc).__name__}: {exc}")


def _epochs(members: list[_Member], results: list[TrainResult | None], progress: StepFn | None) -> None:
    """The epoch loop: each epoch, the members at that epoch step on one shared batch stream."""
    if not members:
        return
    last = max(m.state.run.recipe.epochs for m in members)
    lead = max(members, key=lambda m: m.state.run.recipe.epochs).state.run  # the longest order list
    for epoch in range(min(m.state.start for m in members), last + 1):
        active = [m for m in members if results[m.index] is None and not m.state.history["stopped"]
                  and m.state.start <= epoch <= m.state.run.recipe.epochs]
        if not active:
            continue
        te = time.perf_counter()
        totals = {}
        for m in active:
            with _own_rng(m):
                start_epoch(m.state, epoch)
                begin_epoch(m.state.run, epoch)
            totals[m.index] = torch.zeros((), dtype=torch.float32, device=m.state.run.device)
        lead.train_sampler.set_epoch(epoch)
        steps, num_steps = 0, len(lead.train_sampler)
        for x, rows in lead.train_loader:
            x = prepare_input(lead, x)  # decoded, moved and prepared once for every model
            rows = rows.to(lead.device, non_blocking=True)
            for m in list(active):
                with _own_rng(m):
                    value = _guard(m, lambda m=m: train_step(m.state.run, x, rows))
                if isinstance(value, TrainResult):
                    results[m.index] = value
                    active.remove(m)
                    continue
                totals[m.index] += value
            steps += 1
            if progress is not None:
                progress(epoch, steps, num_steps)
        train_s = time.perf_counter() - te
        for m in active:
            with _own_rng(m):
                mean = totals[m.index] / max(steps, 1)
                failed = _guard(m, lambda m=m, mean=mean: end_epoch(m.state, epoch, mean, train_s))
            if isinstance(failed, TrainResult):
                results[m.index] = failed
