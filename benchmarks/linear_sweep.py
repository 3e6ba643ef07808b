"""Linear-probe sweep benchmark: every loss x 3 seeds x 25 epochs on VOC-sized cached features (CPU).

Builds synthetic features of the VOC protocol's sizes (4,574 train / 1,143 val / 5,823 test,
2,048-d, 20 classes, about 1.5 positives per image, features correlated with the labels so mAP
means something), runs the batched trainer (``spmlbench.train.linear``) on all configs at once,
then times the one-config reference loop (``spmlbench.train.reference``) on a few config-epochs in
the same process (spread over the losses, after one untimed warm-up config-epoch), with the same number of intra-op threads (``--threads``, default: torch's,
i.e. all cores; the reference loop is timed under it too, so the ratio compares the two loops,
not thread settings; ``--threads 1`` on a machine whose cores are busy). The last lines print the whole-sweep wall time, both
throughputs (config-epochs per second) and their ratio.

    python benchmarks/linear_sweep.py                 # VOC-sized, CPU
    python benchmarks/linear_sweep.py --processes 1      # one process (default auto: one per core, as spmlbench run)
    python benchmarks/linear_sweep.py --coco --device cuda
    python benchmarks/linear_sweep.py --select --noise 2   # Cole's protocol with (lr, batch) selection
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from spmlbench.losses import list_losses
from spmlbench.train.linear import LinearData, TrainConfig
from spmlbench.train.parallel import train_linear_parallel
from spmlbench.train.reference import train_reference

VOC = (4574, 1143, 5823, 20, 1.5)
COCO = (65665, 16416, 40137, 80, 2.9)


def synthetic(sizes: tuple[int, int, int, int, float], dim: int, seed: int = 0, noise: float = 0.5) -> LinearData:
    """Features ``x = y A + noise`` for labels with about ``avg_pos`` positives per image."""
    n_tr, n_va, n_te, c, avg_pos = sizes
    rng = np.random.default_rng(seed)
    prior = rng.dirichlet(np.ones(c)) * (avg_pos - 1)  # extra positives beyond the first
    templates = rng.normal(size=(c, dim)).astype(np.float32) / np.sqrt(dim) * 3

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = (rng.random((n, c)) < prior).astype(np.float32)
        first = rng.integers(0, c, n)
        y[np.arange(n), first] = 1
        x = y @ templates + rng.normal(size=(n, dim)).astype(np.float32) * noise
        s = np.zeros_like(y)
        pick = [rng.choice(np.flatnonzero(row)) for row in y]
        s[np.arange(n), pick] = 1
        return torch.from_numpy(np.maximum(x, 0).astype(np.float32)), torch.from_numpy(y), torch.from_numpy(s)

    xt, yt, st = split(n_tr)
    xv, yv, sv = split(n_va)
    xe, ye, _ = split(n_te)
    return LinearData("synthetic", xt, xv, xe, yt, st, yv, sv, ye)


def configs(losses: list[str], seeds: list[int], epochs: int, batch: int, avg_pos: float) -> list[TrainConfig]:
    """One config per (loss, seed) with the loss's hyperparameters for a dataset without defaults."""
    extra = {"epr": {"expected_num_pos": avg_pos}, "role": {"expected_num_pos": avg_pos},
             "em": {"alpha": 0.2}, "em_apl": {"alpha": 0.2, "beta": 0.02, "warmup_epoch": 5}}
    return [TrainConfig(loss, tuple(sorted(extra.get(loss, {}).items())), seed=s, lr=1e-4, batch_size=batch,
                        epochs=epochs, early_stop="none") for loss in losses for s in seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--coco", action="store_true", help="COCO sizes (65,665/16,416/40,137, 80 classes)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--ref-configs", type=int, default=16,
                    help="reference-loop configs timed (1 epoch each, spread over the losses (16: one per loss), after a warm-up)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op CPU threads for both loops")
    ap.add_argument("--processes", default="auto",
                    help="split the sweep's configs over this many CPU processes (threads // processes each); "
                         "auto (default, as spmlbench run): one per core for long runs")
    ap.add_argument("--select", action="store_true",
                    help="Cole et al.'s protocol: every loss on the (lr, batch) grid on seed 0, the other seeds at "
                         "each loss's selected point (benchmarks/linear_select.py)")
    ap.add_argument("--noise", type=float, default=0.5, help="feature noise of the generator (the issue's runs: 2.0)")
    args = ap.parse_args()
    sizes = COCO if args.coco else VOC
    torch.set_num_threads(args.threads)  # a benchmark script: both loops run under the same setting
    processes = None if args.processes == "auto" else int(args.processes)
    data = synthetic(sizes, args.dim, noise=args.noise)
    losses = list_losses()
    cfgs = configs(losses, list(range(args.seeds)), args.epochs, args.batch_size, sizes[4])
    if args.select:
        from linear_select import run_select

        run_select(data, losses, {c.loss: c.hparams for c in cfgs}, args)
        return
    if processes is None:
        from spmlbench.train.parallel import auto_processes

        processes = auto_processes(cfgs, sizes[0], args.device)
    print(f"features: train {sizes[0]} / val {sizes[1]} / test {sizes[2]}, {args.dim}-d, {sizes[3]} classes; "
          f"{len(cfgs)} configs x {args.epochs} epochs, batch {args.batch_size}, device {args.device}, "
          f"threads {torch.get_num_threads()}, processes {processes}")
    t0 = time.perf_counter()
    results = train_linear_parallel(data, cfgs, device=args.device, threads=args.threads, processes=processes)
    batched_s = time.perf_counter() - t0
    by_loss: dict[str, list[float]] = {}
    for c, r in zip(cfgs, results):
        by_loss.setdefault(c.loss, []).append(r.test_map)
    for loss, maps in by_loss.items():
        print(f"  {loss:7s} test mAP {np.mean(maps):6.2f} +- {np.std(maps):.2f}")
    one_epoch = [TrainConfig(c.loss, c.hparams, c.seed, c.lr, c.batch_size, 1, c.early_stop) for c in cfgs]
    ref_cfgs = one_epoch[:: max(1, len(cfgs) // args.ref_configs)][: args.ref_configs]
    # untimed warm-up: the process's first training pays one-time costs (about a second: first calls of
    # kernels and allocators, thread pools) that a real sweep of 48 x 25 config-epochs amortises
    train_reference(data, one_epoch[-1:], device=args.device)
    t0 = time.perf_counter()
    train_reference(data, ref_cfgs, device=args.device)
    ref_s = time.perf_counter() - t0
    batched_rate = len(cfgs) * args.epochs / batched_s
    ref_rate = len(ref_cfgs) / ref_s
    steps = -(-sizes[0] // args.batch_size) * args.epochs
    print(f"whole sweep wall time: {batched_s:.1f} s ({len(cfgs)} configs x {args.epochs} epochs, "
          f"{batched_s / steps * 1e3:.2f} ms per step of all configs)")
    print(f"batched: {batched_rate:.2f} config-epochs/s")
    print(f"reference loop: {ref_rate:.3f} config-epochs/s ({len(ref_cfgs)} config-epochs in {ref_s:.1f} s)")
    print(f"ratio: {batched_rate / ref_rate:.1f}x")


if __name__ == "__main__":
    main()
