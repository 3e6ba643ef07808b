"""Linear configs split over processes: whole loss calls per process, same numbers as one process."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from spmlbench.errors import ConfigError
from spmlbench.train.linear import TrainConfig, train_linear
from spmlbench.train.parallel import split_configs, train_linear_parallel
from test_linear_support import synthetic_data


def cfg(loss: str, seed: int, **kw) -> TrainConfig:
    hp = {"role": (("expected_num_pos", 1.6),), "em_apl": (("alpha", 0.1), ("beta", 0.3), ("warmup_epoch", 1))}
    base = dict(loss=loss, hparams=hp.get(loss, ()), seed=seed, lr=3e-2, batch_size=8, epochs=2, early_stop="none")
    base.update(kw)
    return TrainConfig(**base)


def test_split_keeps_loss_calls_whole_and_balances_cost() -> None:
    configs = [cfg(n, s) for n in ("an", "role", "gr", "bce", "em_apl") for s in (0, 1, 2)]
    groups = split_configs(configs, 2)
    assert sorted(i for g in groups for i in g) == list(range(15))
    losses = [{configs[i].loss for i in g} for g in groups]
    assert not (losses[0] & losses[1])  # with more calls than parts, every loss call stays whole
    # costs (AN = 1, head 0.65 per config): role 6 + 1.95 = 7.95 first, then em_apl 4.15, gr 3.35,
    # an 2.95 (lower index than bce on a tie), bce 2.95, each onto the lighter part:
    # {role, bce} 10.9 vs {em_apl, gr, an} 10.45
    assert losses == [{"role", "bce"}, {"em_apl", "gr", "an"}]
    assert split_configs(configs, 1) == [list(range(15))]
    # configs of one loss with a different batch size are a separate call
    mixed = [cfg("an", 0), cfg("an", 0, batch_size=16)]
    assert sorted(map(len, split_configs(mixed, 2))) == [1, 1]


def test_split_halves_a_large_call_when_parts_outnumber_calls() -> None:
    grid = [cfg("gr", s, lr=lr) for s in (0, 1) for lr in (1e-2, 1e-3, 1e-4)]  # one loss call of 6 configs
    groups = split_configs(grid, 2)
    assert sorted(map(len, groups)) == [3, 3] and sorted(i for g in groups for i in g) == list(range(6))
    assert sorted(map(len, split_configs(grid, 4))) == [1, 1, 2, 2]
    assert len(split_configs(grid[:1], 4)) == 1  # one config cannot be split


def test_auto_processes_only_for_long_cpu_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    from spmlbench.train import parallel

    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    long_run = [cfg("an", s, epochs=25) for s in (0, 1, 2)]  # 4574 / 8 -> 572 steps x 25
    assert parallel.auto_processes(long_run, 4574, "cpu") == 3  # at most one per config
    assert parallel.auto_processes(long_run * 2, 4574, "cpu") == 4  # at most one per core
    assert parallel.auto_processes(long_run, 4574, "cuda") == 1
    assert parallel.auto_processes([cfg("an", 0, epochs=2)], 4574, "cpu") == 1  # 1144 steps: not worth spawning


def test_two_processes_equal_one_process_bit_for_bit() -> None:
    data = synthetic_data()
    configs = [cfg(n, s) for n in ("an", "role", "gr", "em_apl", "ll_cp") for s in (0, 1)]
    configs.append(cfg("an", 2, batch_size=16, early_stop="no_improve"))
    seen_events: list[tuple[int, int]] = []
    dumps: dict[tuple[int, int], torch.Tensor] = {}

    def on_val(epoch: int, idx: list[int], probs: torch.Tensor) -> None:
        for k, i in enumerate(idx):
            dumps[(epoch, i)] = probs[k].clone()

    one_dumps: dict[tuple[int, int], torch.Tensor] = {}
    one = train_linear(data, configs, threads=1,
                       on_val=lambda e, idx, p: one_dumps.update({(e, i): p[k].clone() for k, i in enumerate(idx)}))
    two = train_linear_parallel(data, configs, threads=2, processes=2, on_val=on_val,
                       progress=lambda p: seen_events.append((p.epoch, p.configs)))
    for c, a, b in zip(configs, one, two):
        assert dataclasses.asdict(a) == dataclasses.asdict(b), c
    assert set(dumps) == set(one_dumps)
    for key, probs in one_dumps.items():
        assert torch.equal(dumps[key], probs), key
    assert sorted({e for e, _ in seen_events}) == [1, 2] and sum(m for e, m in seen_events if e == 1) == len(configs)


def test_processes_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="processes=0"):
        train_linear_parallel(synthetic_data(), [cfg("an", 0)], processes=0)


def test_a_worker_pool_serves_several_calls_with_the_same_workers() -> None:
    """Workers are spawned once per pool (not per cohort); each call still equals one process."""
    from spmlbench.train.parallel import WorkerPool

    data = synthetic_data()
    first = [cfg(n, s) for n in ("an", "gr") for s in (0, 1)]
    second = [cfg(n, s, batch_size=16) for n in ("role", "bce") for s in (0, 2)]
    with WorkerPool(2) as pool:
        a = train_linear_parallel(data, first, threads=2, processes=2, pool=pool)
        workers = set(pool._pool._processes)  # type: ignore[union-attr]  # pids of the live workers
        b = train_linear_parallel(data, second, threads=2, processes=2, pool=pool)
        assert set(pool._pool._processes) == workers and len(workers) == 2  # type: ignore[union-attr]
    assert pool._pool is None  # closed on leaving the block
    assert len(pool._models) == 2  # the cost model: measured once per problem, not per call
    parts = pool.last_parts  # the latest call's parts: the cost model's prediction beside the measurement
    assert sorted(i for p in parts for i in p.configs) == list(range(4))
    assert all(p.predicted_s > 0 and p.wall_s > 0 and p.cpu_s > 0 for p in parts)
    for configs, got in ((first, a), (second, b)):
        want = train_linear(data, configs, threads=1)
        assert [dataclasses.asdict(r) for r in got] == [dataclasses.asdict(r) for r in want]


def test_the_runner_starts_one_pool_per_run_and_closes_it(monkeypatch: pytest.MonkeyPatch, home, tmp_path) -> None:
    from spmlbench.experiments.jobs import expand_jobs
    from spmlbench.experiments.runner import run_jobs
    from spmlbench.train import parallel
    from test_linear_support import write_dataset

    pools: list[parallel.WorkerPool] = []
    closed: list[parallel.WorkerPool] = []

    class Counting(parallel.WorkerPool):
        def __init__(self, size: int) -> None:
            super().__init__(size)
            pools.append(self)

        def close(self) -> None:
            closed.append(self)
            super().close()

    monkeypatch.setattr(parallel, "WorkerPool", Counting)
    write_dataset(home)
    meta = {"protocol": {"label_seed": 1200, "split_seed": 1200}, "expected_positives": {"computed": 1.6}}
    jobs = [j for bs in (8, 16) for j in expand_jobs(dataset="voc", losses=["an", "gr"], seeds=[0, 1], meta=meta,
                                                     backbone="resnet50", epochs=2, batch_size=bs, lr=1e-4)]
    summary = run_jobs(jobs, tmp_path / "res", home=home, device="cpu", processes=2)  # two cohorts (batch sizes)
    assert len(summary.ran) == 8 and not summary.failed
    assert len(pools) == 1 and closed == pools and pools[0]._pool is None


def test_an_error_in_the_caller_stops_the_workers() -> None:
    """A callback that raises in the parent (e.g. a full disk while writing dumps) ends the call at once
    and terminates the workers instead of leaving them training the rest of the cohort."""
    from spmlbench.train.parallel import WorkerPool

    data = synthetic_data()
    configs = [cfg(n, s, epochs=30) for n in ("an", "gr") for s in (0, 1)]

    def boom(epoch: int, idx: list[int], probs: torch.Tensor) -> None:
        raise OSError("disk full")

    pool = WorkerPool(2)
    with pytest.raises(OSError, match="disk full"):
        train_linear_parallel(data, configs, threads=2, processes=2, pool=pool, on_val=boom)
    assert pool._pool is None
    again = train_linear_parallel(data, configs[:2], threads=2, processes=2, pool=pool)  # new workers on the next call
    assert [r.status for r in again] == ["ok", "ok"]
    pool.close()
