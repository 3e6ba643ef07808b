"""Linear-probe configs split over CPU processes (``train_linear_parallel(processes=n)``).

On a CPU the batched trainer's step is bound by per-op overhead (each of the 16 losses is a few
dozen tiny ops), which one Python process cannot spread over cores. This module splits the configs
into ``n`` parts along loss-call boundaries (configs that share one batched loss module stay
together, so each loss's cost is paid once per part), balances the parts by an estimated step cost,
and trains each part with :func:`~spmlbench.train.linear.train_linear` in its own spawned process
(``threads // n`` intra-op threads each). Features reach the workers through shared memory.
A :class:`WorkerPool` keeps its workers for several calls (the runner keeps one for a whole run,
so the spawn and torch import are paid once, not once per cohort).

A config's numbers do not depend on which other configs share its run (see
:mod:`spmlbench.train.optim`), so a split run equals a single-process run with the same per-process
thread count, bit for bit; across thread counts matrix products may round differently.
Progress and per-epoch val scores (prediction dumps) are forwarded to the caller's callbacks.
Workers are spawned (not forked: torch's thread pools are not fork-safe), so a script that asks for
more than one process needs the ``if __name__ == "__main__":`` guard; a notebook does not.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import queue as queue_mod
import time
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch
import torch.multiprocessing as tmp

from spmlbench.errors import ConfigError
from spmlbench.runtime import available_cpus, terminate_workers, worker_setup

from spmlbench.train.configs import EpochProgress, LinearData, ProgressFn, TrainConfig, ValHook
from spmlbench.train.cost_model import CostModel, call_groups
from spmlbench.train.result import TrainResult
from spmlbench.train.linear import call_key, train_linear
from spmlbench.train.seeding import num_steps

HEAD_COST = 0.65  # estimated step cost of one config's head (forward, gradient, Adam at 1 thread), AN call = 1
AUTO_MIN_STEPS = 2000  # processes=None splits only runs with at least this many steps per config
AUTO_MAX = 8


def loss_call_cost(loss: str) -> float:
    """Relative per-step cost of one batched call of ``loss`` (its registry entry's ``step_cost``)."""
    from spmlbench.losses import LOSSES

    return float(LOSSES.get(loss).step_cost)


def split_configs(configs: Sequence[TrainConfig], parts: int, model: CostModel | None = None) -> list[list[int]]:
    """Config indices in up to ``parts`` groups, balanced by estimated cost.

    Items are loss calls (configs sharing one batched loss module and cohort). With a cost ``model`` (measured
    for the run's problem, :mod:`spmlbench.train.cost_model`) an item costs its whole run, and an item dearer
    than a fair share (total / parts) is halved until none is (each half pays the call's own cost again);
    without one, the registry's per-call ``step_cost`` plus ``HEAD_COST`` per config. While there are fewer
    items than parts the largest call is halved too (a config's numbers do not depend on which configs share
    its call). Items go largest first onto the lightest group (LPT); with a model, configs then move from the
    dearest group to the cheapest while that lowers the dearest's prediction. Empty groups are dropped.
    """
    items = list(call_groups(configs).values())

    def cost(members: list[int]) -> float:
        if model is not None:
            return model.run_s(configs[members[0]], len(members))
        return loss_call_cost(configs[members[0]].loss) + HEAD_COST * len(members)

    def halve(k: int) -> None:
        members = items.pop(k)
        half = (len(members) + 1) // 2
        items[k:k] = [members[:half], members[half:]]

    while len(items) < parts:
        big = max(range(len(items)), key=lambda k: (len(items[k]), -k))
        if len(items[big]) < 2:
            break
        halve(big)
    if model is not None and parts > 1:
        while True:
            costs = [cost(m) for m in items]
            big = max(range(len(items)), key=lambda k: (costs[k], -k))
            if costs[big] <= sum(costs) / parts or len(items[big]) < 2:
                break
            halve(big)
    groups: list[list[int]] = [[] for _ in range(max(1, parts))]
    loads = [0.0] * len(groups)
    for members in sorted(items, key=lambda m: (-cost(m), m[0])):
        k = min(range(len(groups)), key=lambda g: (loads[g], g))
        groups[k].extend(members)
        loads[k] += cost(members)
    if model is not None:
        _even_out(configs, groups, model)
    return [sorted(g) for g in groups if g]


def _even_out(configs: Sequence[TrainConfig], groups: list[list[int]], model: CostModel, rounds: int = 64) -> None:
    """Move configs from the dearest group to the cheapest while that lowers the dearest's predicted time
    (whole calls are coarse: a call is a few seconds of a VOC sweep); a config moved to a group without its call
    makes that group pay the call's own cost too, as the model predicts."""
    for _ in range(rounds):
        loads = [model.part_s([configs[i] for i in g]) for g in groups]
        hi, lo = max(range(len(groups)), key=lambda g: loads[g]), min(range(len(groups)), key=lambda g: loads[g])
        best: tuple[float, list[int]] | None = None
        for local in call_groups([configs[i] for i in groups[hi]]).values():
            members = [groups[hi][j] for j in local]
            for k in range(1, len(members) + 1):
                moved = members[:k]
                a = model.part_s([configs[i] for i in groups[hi] if i not in moved])
                b = model.part_s([configs[i] for i in groups[lo] + moved])
                if max(a, b) < loads[hi] - 1e-9 and (best is None or max(a, b) < best[0]):
                    best = (max(a, b), moved)
        if best is None:
            return
        groups[hi] = [i for i in groups[hi] if i not in best[1]]
        groups[lo] = groups[lo] + best[1]


def auto_processes(configs: Sequence[TrainConfig], num_train: int, device: str | torch.device) -> int:
    """How many processes ``processes=None`` uses: 1 off the CPU or for short runs (fewer than
    ``AUTO_MIN_STEPS`` optimizer steps in the longest config: spawning costs seconds), else one per
    available core, at most ``AUTO_MAX`` and at most one per config."""
    if torch.device(device).type != "cpu" or not configs:
        return 1
    steps = max(num_steps(num_train, c.batch_size) * c.epochs for c in configs)
    if steps < AUTO_MIN_STEPS:
        return 1
    return max(1, min(auto_size(), len(configs)))


def auto_size() -> int:
    """The most processes ``processes=None`` uses: one per available core, at most ``AUTO_MAX``."""
    cores = available_cpus()
    return max(1, min(cores, AUTO_MAX))


_EVENTS: Any = None  # the worker process's event queue (set by the pool initializer, one per process)


def _init_worker(events: Any, parent: int) -> None:
    """Worker setup: the event queue; Ctrl-C is left to the caller (it terminates the workers);
    a worker whose caller died (kill -9) exits instead of training on as an orphan."""
    global _EVENTS
    _EVENTS = events
    worker_setup(parent)


def _train_part(call: int, part: int, data: LinearData, configs: list[TrainConfig], device: str, threads: int,
                want_val: bool, plugins: Sequence[Any] = ()) -> list[TrainResult]:
    from spmlbench.losses.plugins import install_all

    install_all(plugins)  # plugin losses' files, shipped as text
    torch.set_num_threads(threads)
    events = _EVENTS

    def progress(p: EpochProgress) -> None:
        events.put((call, "progress", part, p))

    def on_val(epoch: int, idx: list[int], probs: torch.Tensor) -> None:
        events.put((call, "val", part, (epoch, idx, probs.detach().cpu().clone())))

    wall, cpu = time.perf_counter(), time.process_time()
    results = train_linear(data, configs, device=device, progress=progress, on_val=on_val if want_val else None)
    return results, time.perf_counter() - wall, time.process_time() - cpu


@dataclasses.dataclass(frozen=True)
class PartTiming:
    """One process's share of a split call: its configs (input indices), the cost model's predicted seconds,
    and the measured wall and CPU seconds of its training."""

    configs: list[int]
    predicted_s: float
    wall_s: float
    cpu_s: float


class WorkerPool:
    """Spawned CPU worker processes, kept for every cohort of a run (the spawn and torch import,
    a few seconds, are paid once per worker, not once per cohort).

    Workers start on first use, at most ``size``; :meth:`close` (or leaving the ``with`` block)
    stops them. A pool serves one caller at a time.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigError(f"processes={size}: must be >= 1")
        self.size = size
        self._pool: cf.ProcessPoolExecutor | None = None
        self._events: Any = None
        self._calls = 0
        self._models: dict[tuple[Any, ...], CostModel] = {}  # measured once per problem
        self.last_parts: list[PartTiming] = []  # the latest split call's parts: predicted vs measured

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers (a later :meth:`train` starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None

    def train(
        self,
        data: LinearData,
        configs: Sequence[TrainConfig],
        processes: int,
        *,
        device: str | torch.device = "cpu",
        progress: ProgressFn | None = None,
        on_val: ValHook | None = None,
        threads: int | None = None,
    ) -> list[TrainResult]:
        """Train ``configs`` split into up to ``min(processes, size)`` parts, balanced by the cost model measured
        for this problem (once per pool); results in input order."""
        parts = min(processes, self.size)
        if parts <= 1 or torch.device(device).type != "cpu" or len(configs) < 2:
            return train_linear(data, configs, device=device, progress=progress, on_val=on_val, threads=threads)
        total = threads if threads is not None else torch.get_num_threads()
        each = max(1, int(total) // parts)
        model = self.cost_model(data, configs, each)
        groups = split_configs(configs, parts, model)
        if len(groups) <= 1:
            return train_linear(data, configs, device=device, progress=progress, on_val=on_val, threads=threads)
        each = max(1, int(total) // len(groups))
        if self._pool is None:
            ctx = tmp.get_context("spawn")
            self._events = ctx.Queue()
            self._pool = cf.ProcessPoolExecutor(max_workers=self.size, mp_context=ctx, initializer=_init_worker,
                                                initargs=(self._events, os.getpid()))
        self._calls += 1
        call = self._calls  # events of an earlier, interrupted call are told apart and dropped
        results: list[TrainResult | None] = [None] * len(configs)
        from spmlbench.losses.plugins import sources_for

        plugins = sources_for({c.loss for c in configs})
        futures = {self._pool.submit(_train_part, call, k, data, [configs[i] for i in g], str(device), each,
                                     on_val is not None, plugins): k for k, g in enumerate(groups)}
        predicted = [model.part_s([configs[i] for i in g]) for g in groups]
        timings: list[PartTiming | None] = [None] * len(groups)
        try:
            pending = set(futures)
            while pending:
                _drain(self._events, call, groups, progress, on_val, timeout=0.2)
                done, pending = cf.wait(pending, timeout=0)
                for fut in done:
                    try:
                        part = fut.result()
                    except BrokenProcessPool:
                        self._pool = None  # broken: a later call starts new workers
                        raise ConfigError(
                            f"processes={len(groups)}: a worker process died before returning (killed, out of "
                            "memory, or a script that starts spmlbench without an 'if __name__ == \"__main__\":' "
                            "guard, which spawned workers re-run); guard the entry point or use processes=1"
                        ) from None
                    k = futures[fut]
                    part_results, wall_s, cpu_s = part
                    timings[k] = PartTiming(groups[k], predicted[k], wall_s, cpu_s)
                    for i, r in zip(groups[k], part_results):
                        results[i] = r
            _drain(self._events, call, groups, progress, on_val, timeout=0.0)
            self.last_parts = [t for t in timings if t is not None]
        except BaseException:
            self._terminate()  # do not leave workers training a cohort whose caller gave up
            raise
        return [r for r in results if r is not None]

    def cost_model(self, data: LinearData, configs: Sequence[TrainConfig], threads: int) -> CostModel:
        """The cost model for ``data`` and ``configs`` (measured once per pool and problem)."""
        key = (int(data.x_train.shape[0]), data.dim, data.num_classes, threads,
               tuple(sorted({(c.batch_size, *map(str, call_key(c))) for c in configs})))
        if key not in self._models:
            self._models[key] = CostModel.for_data(data, configs, threads)
        return self._models[key]

    def _terminate(self) -> None:
        """Stop the workers now, mid-task (after an error or an interrupt in the caller)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            terminate_workers(pool)


def train_linear_parallel(data: LinearData, configs: Sequence[TrainConfig], processes: int | None = 1, *,
                          pool: WorkerPool | None = None, **options: Any) -> list[TrainResult]:
    """Train ``configs`` in up to ``processes`` CPU processes (``pool``'s workers, or a pool of this
    call's own; 1: in this process; None: as many as pays off, :func:`auto_processes`); results in
    input order (see module doc). ``options``: ``device``, ``progress``, ``on_val``, ``threads``, as
    :func:`~spmlbench.train.linear.train_linear`."""
    if processes is None:
        processes = auto_processes(configs, data.x_train.shape[0], options.get("device", "cpu"))
    if processes < 1:
        raise ConfigError(f"processes={processes}: must be >= 1")
    if processes == 1:
        return train_linear(data, configs, **options)
    if pool is not None:
        return pool.train(data, configs, processes, **options)
    with WorkerPool(processes) as own:
        return own.train(data, configs, processes, **options)


def _drain(events: Any, call: int, groups: list[list[int]], progress: ProgressFn | None, on_val: ValHook | None,
           timeout: float) -> None:
    """Forward the workers' queued events of call ``call`` to the caller's callbacks."""
    while True:
        try:
            tag, kind, part, payload = events.get(timeout=timeout) if timeout > 0 else events.get_nowait()
        except queue_mod.Empty:
            return
        timeout = 0.0
        if tag != call:
            continue
        if kind == "progress" and progress is not None:
            progress(payload)
        elif kind == "val" and on_val is not None:
            epoch, idx, probs = payload
            on_val(epoch, [groups[part][i] for i in idx], probs)
