"""What one training step of a linear-probe cohort costs on this CPU, per loss call, as a function of the
problem (N rows, C classes, D features, batch B, M configs): the model :mod:`spmlbench.train.parallel` splits
configs over processes with.

A part's step costs ``fixed_s`` (the batch gather and bookkeeping) plus, for each batched call of loss ``l``
over ``M`` configs::

    call_s x step_cost(l)                       the loss's own ops (registry ``step_cost``, AN's call = 1)
    + M x head_s(B, D, C)                       each config: its head's logits, gradient, Adam over D x C + C
    + M x adam_s x state(l, N, C)               each config's learnable loss state under Adam (ROLE: N x C)

and each config pays, per epoch, its val scores (``eval_s`` per val row: the matmul and the AP sort), and once
its test scores. Everything is measured at the start of a split run, on the run's own data and batch size,
at the workers' thread count, denormals flushed as in training (:func:`measure_units`: a few dozen training
steps, under 1 s at VOC size, about 2 s at COCO's): what grows with N, C and D (the heads, the learnable loss
state, the scoring) is measured where it grows, not assumed from VOC-sized constants. ``step_cost`` (the
loss's own ops per call, measured once per loss by ``benchmarks/loss_step.py``) does not grow with N.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence

import torch

from spmlbench.runtime import flush_denormals, intra_op_threads
from spmlbench.train.configs import LinearData, TrainConfig
from spmlbench.train.seeding import num_steps

HEADS_MEASURED = 24  # configs in the per-config measurement (a sweep's heads do not fit in cache; neither do these)
STEPS_MEASURED = 32  # training steps per cohort timing of the units
SEEDS = (0, 1, 2)  # the cohorts timed have three seeds per call, as a sweep's
STATE_MEASURED = 1 << 23  # default entries in the Adam measurement (8M floats: out of cache)
STATE_MAX = 1 << 24  # at most this many (a COCO ROLE call of three configs: 15.8M)


@dataclasses.dataclass(frozen=True)
class UnitCosts:
    """Seconds on this machine: a cohort step's own work (``fixed_s``: the batch gather and bookkeeping), AN's
    call (``call_s``, the unit of ``step_cost``), one config more in a call (``head_s``: its head's logits,
    gradient and Adam, and its share of the loss's entries), Adam per state entry (``adam_s``), scoring one
    val/test row for one config (``eval_s``)."""

    fixed_s: float
    call_s: float
    head_s: float
    adam_s: float
    eval_s: float


def _best_of(fn: Callable[[], object], reps: int) -> float:
    fn()  # warm-up: first calls allocate
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _adam_s(entries: int) -> float:
    """Seconds of one Adam step per entry of a (1, entries) parameter (the tensors are freed after)."""
    from spmlbench.train.optim import BatchedAdam

    state = torch.zeros(1, entries)
    adam = BatchedAdam([state], [[1e-3]])
    grad = torch.full((1, entries), 1e-3)
    return _best_of(lambda: adam.step([grad]), 3) / entries


@torch.inference_mode()
def measure_units(data: LinearData, batch_size: int, threads: int = 1, state: int = STATE_MEASURED) -> UnitCosts:
    """Time the model's constants on ``data`` (its rows: in cache or not, as training will find them) for
    batches of ``batch_size`` with ``threads`` intra-op threads (the workers'): 32 steps of real cohorts of AN
    (three seeds, 24 configs: the step's own work and a config's, heads out of cache as in a sweep) and of AN +
    WAN (a call's), Adam over ``state`` entries (the run's largest learnable loss state), scoring 1,024 val
    rows."""
    from spmlbench.losses import LOSSES
    from spmlbench.train.evaluate import mean_ap
    from spmlbench.train.heads import StackedHeads
    from spmlbench.train.linear import _Cohort

    b, d, c = batch_size, data.dim, data.num_classes
    gen = torch.Generator().manual_seed(0)
    with intra_op_threads(threads), flush_denormals("cpu"):
        adam_s = _adam_s(max(int(state), 1 << 12))
        heads = StackedHeads(torch.randn(1, d, c, generator=gen) * 0.01, torch.zeros(1, c), [0])
        xv, yv = data.x_val[:1024], data.y_val[:1024].unsqueeze(0)
        eval_s = _best_of(lambda: mean_ap(torch.sigmoid(heads.predict(xv)), yv), 3) / max(len(xv), 1)
        steps = min(STEPS_MEASURED, num_steps(int(data.x_train.shape[0]), b))

        def step(*calls: tuple[str, int]) -> float:
            cfgs = [TrainConfig(name, seed=seed, lr=1e-4 * (1 + k), batch_size=b, epochs=1)
                    for name, lrs in calls for k in range(lrs) for seed in SEEDS]
            cohort = _Cohort(data, cfgs, torch.device("cpu"))
            return _best_of(lambda: cohort._train_epoch(1, steps), 3) / steps

        one, many = step(("an", 1)), step(("an", HEADS_MEASURED // len(SEEDS)))
        two = step(("an", 1), ("wan", 1))
    config_s = max(many - one, 0.0) / (HEADS_MEASURED - len(SEEDS))  # a config more in a call
    call_s = max(two - one - len(SEEDS) * config_s, 0.0) / float(LOSSES.get("wan").step_cost)  # AN units
    return UnitCosts(fixed_s=max(one - call_s - len(SEEDS) * config_s, 0.0), call_s=call_s, head_s=config_s,
                     adam_s=adam_s, eval_s=eval_s)


def call_groups(configs: Sequence[TrainConfig]) -> dict[tuple[object, ...], list[int]]:
    """Config indices by the batched loss call that trains them: one cohort (batch size, epochs) and one
    :func:`spmlbench.train.linear.call_key`."""
    from spmlbench.train.linear import call_key

    calls: dict[tuple[object, ...], list[int]] = {}
    for i, c in enumerate(configs):
        calls.setdefault((c.batch_size, c.epochs, *call_key(c)), []).append(i)
    return calls


def state_entries(config: TrainConfig, num_train: int, num_classes: int, dataset: str | None = None) -> int:
    """Entries of one config's learnable loss state (its optimizer groups: ROLE's N x C label logits; 0 for
    most), counted on the meta device (nothing allocated; once per loss, hyperparameters and size)."""
    return _state_entries(config.loss, config.hparams, num_train, num_classes, dataset)


@functools.lru_cache(maxsize=256)
def _state_entries(loss: str, hparams: tuple[tuple[str, object], ...], num_train: int, num_classes: int,
                   dataset: str | None) -> int:
    from spmlbench.losses import build_batched_loss

    try:
        with torch.device("meta"):
            built = build_batched_loss(loss, [dict(hparams)], num_classes=num_classes, num_train=num_train,
                                       dataset=dataset)
            return sum(int(p.numel()) for g in built.param_groups(1.0) for p in g["params"])
    except Exception:  # noqa: BLE001 - a plugin that cannot build on the meta device: its registry cost only
        return 0


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Step and epoch costs of loss calls for one problem: ``units`` at (B, D, C), ``num_train`` N, ``num_val``
    val rows and ``num_test`` test rows."""

    units: UnitCosts
    num_train: int
    num_classes: int
    num_val: int = 0
    num_test: int = 0
    dataset: str | None = None

    def step_s(self, config: TrainConfig, configs: int) -> float:
        """Seconds per training step of one call of ``config``'s loss over ``configs`` configs like it: the call's
        own cost (``call_s x step_cost``) plus each config's head and state."""
        from spmlbench.losses import LOSSES

        u = self.units
        state = state_entries(config, self.num_train, self.num_classes, self.dataset)
        return u.call_s * float(LOSSES.get(config.loss).step_cost) + configs * (u.head_s + u.adam_s * state)

    def run_s(self, config: TrainConfig, configs: int) -> float:
        """Seconds for the whole run of that call: every step of every epoch, val scores every epoch, test
        scores once."""
        steps = num_steps(self.num_train, config.batch_size)
        scoring = configs * self.units.eval_s * (self.num_val * config.epochs + self.num_test)
        return self.step_s(config, configs) * steps * config.epochs + scoring

    def part_s(self, configs: Sequence[TrainConfig]) -> float:
        """Seconds for one process training ``configs``: per cohort (equal batch size and epochs) its loss calls
        as :func:`spmlbench.train.linear.call_key` groups them, plus the step's own work."""
        cohorts = {(c.batch_size, c.epochs) for c in configs}
        own = sum(self.units.fixed_s * num_steps(self.num_train, b) * e for b, e in cohorts)
        return own + sum(self.run_s(configs[m[0]], len(m)) for m in call_groups(configs).values())

    @classmethod
    def for_data(cls, data: LinearData, configs: Sequence[TrainConfig], threads: int = 1) -> CostModel:
        """Measure the units for ``data``'s sizes at the configs' batch size (:func:`measure_units`; the Adam
        constant at the size of their largest learnable loss state, a call's configs together)."""
        n, c = int(data.x_train.shape[0]), data.num_classes
        calls = call_groups(configs).values()
        state = max([len(m) * state_entries(configs[m[0]], n, c, data.dataset) for m in calls] + [0])
        units = measure_units(data, max(cfg.batch_size for cfg in configs), threads,
                              min(state, STATE_MAX) if state else STATE_MEASURED)
        return cls(units, n, c, int(data.x_val.shape[0]), int(data.x_test.shape[0]), data.dataset)
