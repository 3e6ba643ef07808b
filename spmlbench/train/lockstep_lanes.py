"""Lanes: a fast-mode lockstep group on the CPU split over spawned processes, the models of each lane one after
another on its own input pipeline.

Why (benchmarks/README.md, "Lockstep end-to-end training"): at the sizes a CPU trains end to end (batch 8,
32-64 px) one ResNet-18 step is a chain of small convolutions that two intra-op threads split badly; two
processes of one thread each, every one stepping half of the models, give 1.19-1.25x the image-steps/s of one
process of two threads (8 models, 2 cores). Each lane decodes its own batches (a decode per lane and batch
instead of one per group: small next to the models' steps).

Numerics: a lane is :func:`spmlbench.train.lockstep.train_lockstep`'s in-process group with ``threads // lanes``
intra-op threads, so its jobs' numbers equal an in-process group run with that thread count bit for bit
(tests/test_lockstep_lanes.py; each record's ``settings`` names its thread count). Across thread counts oneDNN's
convolutions round differently, and training from random weights amplifies that (digits, 2 epochs: up to 0.7
test-mAP points), so lanes run only when asked (``run --processes N``); ``--exact`` groups and CUDA groups never
split. Lanes exit when their caller dies (kill -9);
every job keeps its own work folder, so a killed group resumes every job from its own last epoch.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue as queue_mod
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch
import torch.multiprocessing as tmp

from spmlbench.errors import SpmlError
from spmlbench.runtime import terminate_workers, worker_setup


def lane_count(n_jobs: int, device: torch.device, exact: bool, processes: int | None) -> int:
    """How many processes a lockstep group of ``n_jobs`` trains in: one on CUDA, with ``exact``, for a single job
    or unless asked (``processes`` None: a lane's thread count rounds differently from a separate run's, so the
    default keeps the numbers of separate runs); else ``processes``, at most one per job."""
    if device.type != "cpu" or exact or n_jobs < 2 or processes is None:
        return 1
    return max(1, min(int(processes), n_jobs))


def split_lanes(costs: Sequence[float], lanes: int) -> list[list[int]]:
    """Job indices in ``lanes`` parts balanced by cost (the longest first to the lightest part), each part in
    input order; no part empty."""
    parts: list[list[int]] = [[] for _ in range(min(lanes, len(costs)))]
    load = [0.0] * len(parts)
    for i in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        k = min(range(len(parts)), key=lambda p: (load[p], p))
        parts[k].append(i)
        load[k] += costs[i]
    return [sorted(p) for p in parts if p]


_LANE: dict[str, Any] = {}  # in a lane's worker process only: its event queue and lane index (empty elsewhere)


def _init_lane(parent: int, events: Any) -> None:
    worker_setup(parent)
    _LANE["events"] = events


def lane_event(event: Any) -> None:
    """In a lane: hand ``event`` (picklable) to the caller's ``on_event`` with the lane's index; a no-op
    elsewhere."""
    events = _LANE.get("events")
    if events is not None:
        events.put((_LANE["lane"], event))


def _lane(fn: Callable[..., list[Any]], args: tuple[Any, ...], threads: int, plugins: Sequence[Any],
          lane: int) -> list[Any]:
    """One lane in its worker process: the plugin files, its thread count, then ``fn(*args)``."""
    from spmlbench.losses.plugins import install_all

    _LANE["lane"] = lane
    install_all(plugins)
    torch.set_num_threads(threads)
    return fn(*args)


def run_lanes(fn: Callable[..., list[Any]], calls: Sequence[tuple[Any, ...]], threads: int,
              losses: Sequence[str], on_event: Callable[[int, Any], None] | None = None) -> list[list[Any]]:
    """``fn(*call)`` for each call, each in its own spawned process with ``threads`` intra-op threads; the results
    in order. ``fn`` must be importable (a module-level function); ``losses``: the names whose plugin files the
    workers need; ``on_event(lane, event)`` gets what a lane sends with :func:`lane_event`, here, as it comes. A
    worker that dies (killed, out of memory) is a one-line :class:`~spmlbench.errors.SpmlError`; an error or an
    interrupt here stops every worker."""
    from spmlbench.losses.plugins import sources_for

    plugins = sources_for(set(losses))
    ctx = tmp.get_context("spawn")
    events = ctx.Queue()
    pool = cf.ProcessPoolExecutor(max_workers=len(calls), mp_context=ctx, initializer=_init_lane,
                                  initargs=(os.getpid(), events))
    try:
        futures = [pool.submit(_lane, fn, call, threads, plugins, k) for k, call in enumerate(calls)]
        try:
            pending = set(futures)
            while pending:
                _, pending = cf.wait(pending, timeout=0.2)
                _drain(events, on_event)
            _drain(events, on_event, wait=0.1)  # a lane's last events may still be on their way
            return [f.result() for f in futures]
        except BrokenProcessPool:
            raise SpmlError(
                f"lockstep: one of {len(calls)} lane processes died before returning (killed, or out of memory); "
                "a re-run resumes every job from its last epoch; use --processes 1 to train the group in one "
                "process (or guard a script's entry point with 'if __name__ == \"__main__\":')") from None
    except BaseException:
        terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _drain(events: Any, on_event: Callable[[int, Any], None] | None, wait: float = 0.0) -> None:
    """Hand every queued lane event to ``on_event`` (waiting up to ``wait`` s for each next one)."""
    while True:
        try:
            lane, event = events.get(timeout=wait) if wait else events.get_nowait()
        except queue_mod.Empty:
            return
        if on_event is not None:
            on_event(lane, event)

