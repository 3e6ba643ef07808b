"""``linear_sweep.py --select``: Cole et al.'s linear protocol on the VOC-sized generator, timed.

Stage 1 trains every loss at every (lr, batch) point of the protocol's grid on seed 0 (one batched
call per batch size), the selection picks each loss's point on its best val mAP, stage 2 trains the
other seeds at that point. Prints, per loss: the selected point, the selected test mAP (mean ± std
over seeds), seed 0's test mAP at the selected point and at its best grid point (by test, an
oracle the protocol never sees), and the wall time of each stage.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from spmlbench.experiments.recipes import linear_protocol
from spmlbench.train.linear import LinearData, TrainConfig
from spmlbench.train.parallel import train_linear_parallel


def _train(data: LinearData, cfgs: list[TrainConfig], args: Any) -> list[Any]:
    out: dict[int, Any] = {}
    for bs in sorted({c.batch_size for c in cfgs}):
        idx = [i for i, c in enumerate(cfgs) if c.batch_size == bs]
        procs = None if args.processes == "auto" else int(args.processes)
        if procs is None:
            from spmlbench.train.parallel import auto_processes

            procs = auto_processes([cfgs[i] for i in idx], data.x_train.shape[0], args.device)
        res = train_linear_parallel(data, [cfgs[i] for i in idx], procs, device=args.device, threads=args.threads)
        out.update(zip(idx, res))
    return [out[i] for i in range(len(cfgs))]


def run_select(data: LinearData, losses: list[str], hparams: dict[str, tuple], args: Any) -> None:
    """The two-stage sweep with selection; prints the table and the times."""
    proto = linear_protocol()
    points = proto.points()
    seeds = list(range(args.seeds))
    stage1 = [TrainConfig(loss, hparams[loss], seeds[0], lr, bs, args.epochs, proto.early_stop)
              for loss in losses for lr, bs in points]
    t0 = time.perf_counter()
    res1 = _train(data, stage1, args)
    t1 = time.perf_counter() - t0
    chosen: dict[str, int] = {}
    for loss in losses:
        idx = [i for i, c in enumerate(stage1) if c.loss == loss]
        scores = [max(res1[i].val_map) if res1[i].status == "ok" and res1[i].val_map else -np.inf for i in idx]
        chosen[loss] = idx[int(np.argmax(scores))]
    stage2 = [TrainConfig(loss, hparams[loss], s, stage1[chosen[loss]].lr, stage1[chosen[loss]].batch_size,
                          args.epochs, proto.early_stop) for loss in losses for s in seeds[1:]]
    t0 = time.perf_counter()
    res2 = _train(data, stage2, args) if stage2 else []
    t2 = time.perf_counter() - t0
    print(f"{'loss':7s} {'selected':>12s} {'test (seeds)':>15s} {'seed0@sel':>9s} {'seed0 best':>10s} {'best at':>11s}")
    for loss in losses:
        sel = stage1[chosen[loss]]
        maps = [res1[chosen[loss]].test_map] + [r.test_map for c, r in zip(stage2, res2) if c.loss == loss]
        idx = [i for i, c in enumerate(stage1) if c.loss == loss]
        best = max(idx, key=lambda i: res1[i].test_map if res1[i].status == "ok" else -np.inf)
        print(f"{loss:7s} {sel.lr:>7g}/{sel.batch_size:<4d} {np.mean(maps):7.2f} ± {np.std(maps, ddof=1) if len(maps) > 1 else 0:.2f}"
              f" {res1[chosen[loss]].test_map:9.2f} {res1[best].test_map:10.2f} {stage1[best].lr:>6g}/{stage1[best].batch_size}")
    print(f"stage 1 (grid, {len(stage1)} configs x {args.epochs} epochs): {t1:.1f} s; "
          f"stage 2 ({len(stage2)} configs): {t2:.1f} s; whole sweep with selection: {t1 + t2:.1f} s")
