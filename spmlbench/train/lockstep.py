"""Lockstep end-to-end training: the jobs that share their batch order train together on one input pipeline.

Matched seeds mean that every loss of one seed sees the same images in the same order with the same flips
(:func:`spmlbench.train.seeding.epoch_orders`, :class:`spmlbench.train.images.EpochBatchSampler`, the flip hash
of (seed, epoch, row)). :func:`train_lockstep` decodes, resizes and flips each training batch once, moves it
to the device once and prepares it once, then lets every job's model take its step on it, each with its own
loss, head, optimiser, lr groups, schedule, early stop and best state (the jobs are the members of one run of
the epoch engine, :func:`spmlbench.train.engine.fit`); a job that stops early or fails drops out. The
models share the device one after another on one stream (measured: stacking the models, with
``torch.func.stack_module_state`` + ``vmap`` or as one ResNet of ``groups=M`` convolutions, is no faster on the
CPU; benchmarks/README.md). The val and test passes share their batches the same way (decoded once, every
model scores them). Each job keeps its own work folder: checkpoints after every epoch, so a killed group
resumes every job from its own last epoch (a job behind the others catches up first, alone). A group larger
than the device holds trains in parts (:mod:`spmlbench.train.lockstep_memory`). On the CPU a fast-mode group
may train in lanes, when asked: spawned processes with a share of the intra-op threads each, every one such a
group over part of the jobs (:mod:`spmlbench.train.lockstep_lanes`; two lanes of one thread beat one process of
two by about 20%, at the price of another thread count's rounding).

Numerics: each job builds the optimiser a separate run of it builds (:func:`spmlbench.train.e2e_job.fused_kernels`:
torch's fused Adam / SGD kernels unless ``exact``), steps on the same inputs and keeps its own global RNG stream,
so on the CPU its numbers equal a separate run's bit for bit, with ``exact`` or without (tests/test_lockstep.py,
tests/test_lockstep_fast.py), and do not depend on which jobs share its group. On CUDA the fast mode's bf16
kernels are not deterministic, in a group or alone.

Who can join (:func:`lockstep_key`): mode ``e2e`` jobs of a plain method (the linear head with a loss, no
trainer of its own, no per-batch features): a method with its own head (BoostLU, MIME, SMILE) runs apart. Jobs join when they agree on dataset, seed, protocol seeds, backbone and weights, image size,
batch size, eval batch size and numerics; their epoch counts may differ (the orders of the first epochs are the
same stream). The global RNG of each job is kept apart (seeded with the job's seed, as
:func:`spmlbench.train.e2e.train_e2e` does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from spmlbench.runtime import backend_flags, resolve_device
from spmlbench.errors import LossError, SpmlError
from spmlbench.train.e2e import StepFn, failed_result, job_settings, load_cached_result, save_result
from spmlbench.train.e2e_data import backbone_and_weights
from spmlbench.train.e2e_job import (
    JobState,
    begin_epoch,
    end_epoch,
    end_training_pass,
    job_member,
    job_result,
    keep_best_job,
    load_best,
    prepare_input,
    scores_map,
    setup_job,
    start_epoch,
    train_step,
)
from spmlbench.train.e2e_recipe import E2ERecipe
from spmlbench.train.engine import Failure, Member, fit
from spmlbench.train.hooks import Hooks
from spmlbench.train.configs import EpochProgress, ProgressFn
from spmlbench.train.lockstep_lanes import lane_count, lane_event, run_lanes, split_lanes
from spmlbench.train.lockstep_memory import device_budget, group_limit, split_sizes, step_memory
from spmlbench.train.result import TrainResult

T = TypeVar("T")


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
    tested: bool = False  # reached its test (its result is kept in its work folder)


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
                   image_size: int | None = None, processes: int | None = 1,
                   on_epoch: ProgressFn | None = None) -> list[TrainResult]:
    """Train ``jobs`` (one :func:`lockstep_key`) together; one :class:`TrainResult` per job, in order. A job
    whose training raises becomes a failed result; the others go on. ``image_size``: default the jobs' own
    (else the backbone's). More jobs than the device holds (:mod:`spmlbench.train.lockstep_memory`) train in
    parts, one after another. ``processes``: a fast-mode group on the CPU trains in up to this many spawned
    processes (:mod:`spmlbench.train.lockstep_lanes`; None or 1: this one), each with its share of the intra-op
    threads (``progress`` is then not called). ``on_epoch``: after each epoch of the group (lanes: of
    the slowest lane), its epoch, the group's epochs, the jobs training and the best val mAP of any of them."""
    dev = resolve_device(device)
    sizes = [len(jobs)]
    if len(jobs) > 1:
        backbone, _ = backbone_and_weights(jobs[0], None)
        size = image_size if image_size is not None else jobs[0].image_size
        memory = step_memory(backbone, size, recipes[0].batch_size, dev, exact)
        sizes = split_sizes(len(jobs), group_limit(memory, device_budget(dev)))
    out: list[TrainResult] = []
    lo = 0
    for n in sizes:
        part = (jobs[lo:lo + n], recipes[lo:lo + n], workdirs[lo:lo + n])
        threads = torch.get_num_threads()
        lanes = lane_count(n, dev, exact, processes)
        if lanes > 1:
            out += _train_lanes(*part, lanes, max(1, threads // lanes), home=home, exact=exact, workers=workers,
                                image_size=image_size, on_epoch=on_epoch)
        else:
            out += _train_group(*part, home=home, dev=dev, exact=exact, workers=workers, progress=progress,
                                image_size=image_size, on_epoch=on_epoch)
        lo += n
    return out


def _train_lanes(jobs: Sequence[Any], recipes: Sequence[E2ERecipe], workdirs: Sequence[str | Path], lanes: int,
                 threads: int, *, home: Any, exact: bool, workers: int | None, image_size: int | None,
                 on_epoch: ProgressFn | None) -> list[TrainResult]:
    """The group in ``lanes`` CPU processes of ``threads`` intra-op threads (balanced by epochs); results in order;
    ``on_epoch`` gets the slowest lane's epochs (a lane's reports come back through the lanes' event queue)."""
    parts = split_lanes([float(r.epochs) for r in recipes], lanes)
    calls = [([jobs[i] for i in p], [recipes[i] for i in p], [Path(workdirs[i]) for i in p], home, exact, workers,
              image_size) for p in parts]
    results: list[TrainResult | None] = [None] * len(jobs)
    seen: dict[int, EpochProgress] = {}

    def report(lane: int, event: EpochProgress) -> None:
        seen[lane] = event
        if on_epoch is not None and len(seen) == len(parts):
            on_epoch(EpochProgress(min(e.epoch for e in seen.values()), max(e.epochs for e in seen.values()),
                                   sum(e.configs for e in seen.values()),
                                   max((e.best_val_map for e in seen.values()), key=_nan_last)))

    for p, got in zip(parts, run_lanes(_lane_group, calls, threads, [j.loss for j in jobs], report)):
        for i, r in zip(p, got):
            results[i] = r
    return [r for r in results if r is not None]


def _lane_group(jobs: Sequence[Any], recipes: Sequence[E2ERecipe], workdirs: Sequence[Path], home: Any, exact: bool,
                workers: int | None, image_size: int | None) -> list[TrainResult]:
    """One lane's jobs, in its worker process (:func:`spmlbench.train.lockstep_lanes.run_lanes`); its epochs are
    reported through the lanes' event queue."""
    return _train_group(jobs, recipes, workdirs, home=home, dev=torch.device("cpu"), exact=exact, workers=workers,
                        progress=None, image_size=image_size, on_epoch=lane_event)


def _nan_last(value: float) -> float:
    return float("-inf") if math.isnan(value) else value


def _train_group(jobs: Sequence[Any], recipes: Sequence[E2ERecipe], workdirs: Sequence[str | Path], *, home: Any,
                 dev: torch.device, exact: bool, workers: int | None, progress: StepFn | None,
                 image_size: int | None, on_epoch: ProgressFn | None = None) -> list[TrainResult]:
    """One group that fits the device (see :func:`train_lockstep`)."""
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
        for m, r in zip(members, _Group(members, progress, on_epoch).fit()):
            results[m.index] = job_result(m.state, r) if r.ok else \
                failed_result(m.state.history, m.state.run.device, m.settings, r.error or "")
            if m.tested:  # a job that failed before its test keeps no result: a re-run trains it again
                save_result(m.workdir, m.fingerprint, results[m.index])
    return [r for r in results if r is not None]


def _guard(fn: Callable[[], T]) -> T | Failure:
    """``fn()``, or this member's :class:`~spmlbench.train.engine.Failure` when it raises (a user error other than
    the loss's own, :class:`~spmlbench.errors.LossError`, stops the group)."""
    try:
        return fn()
    except LossError as exc:
        return Failure(str(exc))
    except SpmlError:
        raise
    except Exception as exc:  # noqa: BLE001 - one job's failure must not stop the group
        return Failure(f"{type(exc).__name__}: {exc}")


class _Group:
    """The jobs of one group as the engine's members (:func:`spmlbench.train.engine.fit`): each epoch the members
    at that epoch step on one shared batch stream, each job's work under its own RNG stream and guarded."""

    def __init__(self, members: list[_Member], progress: StepFn | None, on_epoch: ProgressFn | None = None) -> None:
        self.members, self.progress, self.on_epoch = members, progress, on_epoch
        self.tracks = [job_member(m.state) for m in members]

    def fit(self) -> list[TrainResult]:
        """Train the group; the engine's result of each member, in order."""
        return fit(self.tracks, step=self.step, evaluate=self.evaluate, keep_best=self.keep_best,
                   after_epoch=self.after_epoch, test=self.test)

    def _each(self, idx: list[int], fn: Callable[[_Member, Member], T]) -> list[T | Failure]:
        out: list[T | Failure] = []
        for i in idx:
            with _own_rng(self.members[i]):
                out.append(_guard(functools.partial(fn, self.members[i], self.tracks[i])))
        return out

    def step(self, epoch: int, idx: list[int]) -> list[torch.Tensor | Failure]:
        """One pass over the epoch's batches: each decoded, moved and prepared once, then every member's step."""
        lead = max(self.members, key=lambda m: m.state.run.recipe.epochs).state.run  # the longest order list
        te = time.perf_counter()
        totals: dict[int, torch.Tensor | Failure] = {}
        for i in idx:
            m = self.members[i]
            with _own_rng(m):
                start_epoch(m.state, epoch)
                begin_epoch(m.state.run, epoch)
            totals[i] = torch.zeros((), dtype=torch.float32, device=m.state.run.device)
        lead.train_sampler.set_epoch(epoch)
        steps, num_steps = 0, len(lead.train_sampler)
        for x, rows in lead.train_loader:
            x = prepare_input(lead, x)  # decoded, moved and prepared once for every model
            rows = rows.to(lead.device, non_blocking=True)
            for i in idx:
                total = totals[i]
                if isinstance(total, Failure):
                    continue
                with _own_rng(self.members[i]):
                    value = _guard(functools.partial(train_step, self.members[i].state.run, x, rows))
                if isinstance(value, Failure):
                    totals[i] = value  # this job drops out of the epoch
                else:
                    total += value
            steps += 1
            if self.progress is not None:
                self.progress(epoch, steps, num_steps)
        train_s = time.perf_counter() - te
        for i in idx:
            self.members[i].state.epoch_s = train_s
        return [t if isinstance(t, Failure) else t / max(steps, 1) for t in (totals[i] for i in idx)]

    @torch.no_grad()
    def _predict(self, idx: list[int], rows: Any) -> dict[int, torch.Tensor | Failure]:
        """Each member's eval-mode logits on ``rows`` (:func:`~spmlbench.train.e2e_job.predict`'s), every batch
        decoded, moved and prepared once for all of them."""
        lead = self.members[idx[0]].state.run
        parts: dict[int, list[torch.Tensor] | Failure] = {i: [] for i in idx}
        for i in idx:
            self.members[i].state.run.model.train(False)
        lead.eval_sampler.set_rows(rows)
        for x, _ in lead.eval_loader:
            x = prepare_input(lead, x)
            for i in idx:
                done = parts[i]
                if isinstance(done, Failure):
                    continue
                run = self.members[i].state.run
                with _own_rng(self.members[i]):
                    y = _guard(functools.partial(run.model, x, run.amp_dtype))
                if isinstance(y, Failure):
                    parts[i] = y
                else:
                    done.append(y)
        empty = torch.zeros(0, lead.data.num_classes, device=lead.device)
        return {i: v if isinstance(v, Failure) else (torch.cat(v) if v else empty) for i, v in parts.items()}

    def _scores(self, idx: list[int], rows: Any, labels: Callable[[JobState], torch.Tensor],
                ready: list[None | Failure]) -> tuple[list[tuple[float, list[float]] | Failure], float]:
        """(mAP, AP) x100 of each member on ``rows`` (a member whose ``ready`` is a Failure keeps it), and the
        seconds they took."""
        t0 = time.perf_counter()
        ok = [i for i, r in zip(idx, ready) if not isinstance(r, Failure)]
        logits = self._predict(ok, rows) if ok else {}
        out: list[tuple[float, list[float]] | Failure] = []
        for i, r in zip(idx, ready):
            got = r if isinstance(r, Failure) else logits[i]
            st = self.members[i].state
            out.append(got if isinstance(got, Failure) else _guard(functools.partial(scores_map, got, labels(st))))
        return out, time.perf_counter() - t0

    def evaluate(self, epoch: int, idx: list[int]) -> list[float | Failure]:
        """Each member's val mAP (after its loss's end-of-epoch pass)."""
        ready = self._each(idx, lambda m, _: end_training_pass(m.state))
        lead = self.members[idx[0]].state
        scores, seconds = self._scores(idx, lead.run.data.val_rows, lambda st: st.val_labels, ready)
        for i in idx:
            self.members[i].state.epoch_s += seconds
        return [s if isinstance(s, Failure) else s[0] for s in scores]

    def keep_best(self, epoch: int, idx: list[int]) -> list[None | Failure]:
        """The improved members' best checkpoints."""
        return self._each(idx, lambda m, track: keep_best_job(m.state, epoch, track.result))

    def after_epoch(self, epoch: int, idx: list[int]) -> list[None | Failure]:
        """Each member's ``last.pt``; then the group's epoch to ``on_epoch``."""
        out = self._each(idx, lambda m, track: end_epoch(m.state, epoch, track))
        if self.on_epoch is not None:
            vals = [v for t in self.tracks for v in t.result.val_map]
            self.on_epoch(EpochProgress(epoch, max(m.state.run.recipe.epochs for m in self.members), len(idx),
                                        max(vals) if vals else float("nan")))
        return out

    def test(self, idx: list[int]) -> list[tuple[float, list[float]] | Failure | None]:
        """The test at the best epoch of the members that did not fail (a failed job's record has none)."""
        ok = [i for i in idx if self.tracks[i].result.ok]
        for i in ok:
            self.members[i].tested = True
        if not ok:
            return [None for _ in idx]
        t0 = time.perf_counter()
        ready = self._each(ok, lambda m, _: load_best(m.state))
        lead = self.members[ok[0]].state.run
        scores, _ = self._scores(ok, lead.data.test_rows, lambda st: st.run.data.test_labels.to(st.run.device), ready)
        seconds = time.perf_counter() - t0
        for i in ok:
            history = self.members[i].state.history
            history["wall_s"] = float(history["wall_s"]) + seconds
        tested = dict(zip(ok, scores))
        return [tested.get(i) for i in idx]
