"""Linear-probe sweep benchmark: every loss x 3 seeds x 25 epochs on VOC-sized cached features (CPU).

Builds synthetic features of the VOC protocol's sizes (4,574 train / 1,143 val / 5,823 test,
2,048-d, 20 classes, about 1.5 positives per image, features correlated with the labels so mAP
means something), runs the batched trainer (``spmlbench.train.linear``) on all configs at once,
then times the one-config reference loop (``spmlbench.train.reference``) on every loss in the same
process, with the same number of intra-op threads (``--threads``, default: torch's, i.e. all cores; the
ratio compares the two loops, not thread settings; ``--threads 1`` on a machine whose cores are busy).
The reference sample is one config (seed 0) of every loss: whole config-epochs (``--ref-steps 0``), or, where
an epoch is too long (COCO: 8,209 steps), ``--ref-steps K``: each loss trained for K and for 2K steps of its
epoch (with its val scoring and test scoring), the difference giving its per-step time, scaled to the
full epoch (stated in the output). After a split run (processes > 1) it prints each process's configs, the cost
model's predicted seconds, its measured wall and CPU seconds, and the sweep's CPU time / wall time.
The last lines print the whole-sweep wall time, both throughputs (config-epochs per second) and their ratio.

    python benchmarks/linear_sweep.py                 # VOC-sized, CPU
    python benchmarks/linear_sweep.py --processes 1      # one process (default auto: one per core, as spmlbench run)
    python benchmarks/linear_sweep.py --coco --epochs 1 --ref-steps 200   # COCO-sized, CPU
    python benchmarks/linear_sweep.py --coco --device cuda
    python benchmarks/linear_sweep.py --size cub --epochs 1     # CUB-sized (312 classes); also --size nuswide
    python benchmarks/linear_sweep.py --select --noise 2   # Cole's protocol with (lr, batch) selection
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from spmlbench.losses import default_losses
from spmlbench.train.linear import LinearData, TrainConfig
from spmlbench.train.parallel import WorkerPool, train_linear_parallel
from spmlbench.train.seeding import num_steps
from spmlbench.train.reference import train_reference

VOC = (4574, 1143, 5823, 20, 1.5)
COCO = (65665, 16416, 40137, 80, 2.9)
# train / val / test rows, classes, average positives per image of each benchmark (docs/protocol.md)
SIZES = {"voc": VOC, "coco": COCO, "nuswide": (120000, 30000, 60260, 81, 1.9), "cub": (4795, 1199, 5794, 312, 31.4)}


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
    ap.add_argument("--coco", action="store_true", help="COCO sizes (65,665/16,416/40,137, 80 classes): --size coco")
    ap.add_argument("--size", choices=sorted(SIZES), default="voc", help="the benchmark whose sizes to generate")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--ref-steps", type=int, default=0,
                    help="time the reference loop on K and 2K steps of each loss's epoch and scale to the full epoch "
                         "(0: whole config-epochs)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="intra-op CPU threads for both loops")
    ap.add_argument("--processes", default="auto",
                    help="split the sweep's configs over this many CPU processes (threads // processes each); "
                         "auto (default, as spmlbench run): one per core for long runs")
    ap.add_argument("--select", action="store_true",
                    help="Cole et al.'s protocol: every loss on the (lr, batch) grid on seed 0, the other seeds at "
                         "each loss's selected point (benchmarks/linear_select.py)")
    ap.add_argument("--noise", type=float, default=0.5, help="feature noise of the generator (the issue's runs: 2.0)")
    args = ap.parse_args()
    sizes = COCO if args.coco else SIZES[args.size]
    torch.set_num_threads(args.threads)  # a benchmark script: both loops run under the same setting
    processes = None if args.processes == "auto" else int(args.processes)
    data = synthetic(sizes, args.dim, noise=args.noise)
    losses = default_losses()
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
    with WorkerPool(max(1, processes)) as pool:
        results = train_linear_parallel(data, cfgs, device=args.device, threads=args.threads, processes=processes,
                                        pool=pool)
        batched_s = time.perf_counter() - t0
        parts = pool.last_parts
    by_loss: dict[str, list[float]] = {}
    for c, r in zip(cfgs, results):
        by_loss.setdefault(c.loss, []).append(r.test_map)
    for loss, maps in by_loss.items():
        print(f"  {loss:7s} test mAP {np.mean(maps):6.2f} +- {np.std(maps):.2f}")
    for k, p in enumerate(parts):
        names = sorted({cfgs[i].loss for i in p.configs})
        print(f"process {k}: {len(p.configs)} configs ({', '.join(names)}): predicted {p.predicted_s:.1f} s, "
              f"measured wall {p.wall_s:.1f} s, CPU {p.cpu_s:.1f} s")
    if parts:
        print(f"CPU time / wall time: {sum(p.cpu_s for p in parts) / batched_s:.2f} "
              f"({sum(p.cpu_s for p in parts):.1f} s CPU in {batched_s:.1f} s)")
    batched_rate = len(cfgs) * args.epochs / batched_s
    steps = num_steps(sizes[0], args.batch_size) * args.epochs
    print(f"whole sweep wall time: {batched_s:.1f} s ({len(cfgs)} configs x {args.epochs} epochs, "
          f"{batched_s / steps * 1e3:.2f} ms per step of all configs)")  # before the (long) reference sample
    print(f"batched: {batched_rate:.3f} config-epochs/s", flush=True)
    ref_s, ref_n = reference_time(data, cfgs, args)
    ref_rate = ref_n / ref_s
    print(f"reference loop: {ref_rate:.4f} config-epochs/s ({ref_n} config-epochs, one per loss, in {ref_s:.1f} s"
          f"{', scaled from ' + str(args.ref_steps) + ' and ' + str(2 * args.ref_steps) + ' steps' if args.ref_steps else ''})")
    print(f"ratio: {batched_rate / ref_rate:.1f}x")


def reference_time(data: LinearData, cfgs: list[TrainConfig], args: argparse.Namespace) -> tuple[float, int]:
    """Seconds the reference loop takes for one config-epoch of every loss (seed 0), and how many config-epochs."""
    one = {c.loss: TrainConfig(c.loss, c.hparams, c.seed, c.lr, c.batch_size, 1, c.early_stop) for c in cfgs
           if c.seed == 0}
    steps = num_steps(data.x_train.shape[0], args.batch_size)
    sample = args.ref_steps if 0 < 2 * args.ref_steps < steps else None

    def timed(cfg: TrainConfig, max_steps: int | None) -> float:
        t0 = time.perf_counter()
        train_reference(data, [cfg], device=args.device, max_steps=max_steps)
        return time.perf_counter() - t0

    # untimed warm-up: the process's first training pays one-time costs (first calls of kernels, allocators)
    timed(one["an"], sample or 20)
    total = 0.0
    for cfg in one.values():
        if sample is None:
            took = timed(cfg, None)
            print(f"  reference {cfg.loss:7s} {took:7.1f} s per config-epoch")
        else:  # K and 2K steps, each with the epoch's val and test scoring: the difference is K steps
            short, long = timed(cfg, sample), timed(cfg, 2 * sample)
            per_step = max(long - short, 0.0) / sample
            took = short + per_step * (steps - sample)
            print(f"  reference {cfg.loss:7s} {took:7.1f} s per config-epoch ({per_step * 1e3:.2f} ms per step)")
        total += took
    return total, len(one)


if __name__ == "__main__":
    main()
