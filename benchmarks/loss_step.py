"""Per-step cost of every loss's batched form: forward + backward at linear-probe sizes.

For every registered loss (the CLIP pseudo-label losses on synthetic cached cosines), M configs (default 3)
of the batched module are evaluated on logits (M, B, C) (default B = 8, C = 20, VOC size) and the sum of
the M losses is back-propagated, the way ``spmlbench.train.linear`` calls it once per minibatch step.
Batches cycle through a fixed set
of random training rows (index (B,), observed (B, C) taken from an (N, C) observed matrix with one
positive per row). Schedules are set to a mid-training epoch (``--epoch`` of ``--epochs``) so that
LL selection, SPLC switching, GR schedules and EM-APL pseudo-labels are active.

The baseline, in the same run, is plain PyTorch per-entry assume-negative BCE:
``F.binary_cross_entropy_with_logits(logits, observed.expand(M, B, C), reduction="none")``
averaged over B x C, forward + backward. Each timing is the best (lowest) of ``--rounds``
rounds of ``--steps / --rounds`` steps after a warm-up, rounds interleaved across the losses
(CPU: process CPU time; CUDA: wall time); the last lines print microseconds per
step per loss, the ratio to the baseline, and the total over the losses.

    python benchmarks/loss_step.py                       # CPU, float32, 2000 steps per loss
    python benchmarks/loss_step.py --path fused              # value_and_grad, as the linear trainer calls it
    python benchmarks/loss_step.py --steps 500 --device cuda
    python benchmarks/loss_step.py --path plain              # each loss's plain formula through autograd
    python benchmarks/loss_step.py --plugin examples/my_loss.py --losses an,an_weighted --path fused
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from spmlbench.losses import build_batched_loss, list_losses
from spmlbench.losses.plugins import load_plugin
from spmlbench.train.configs import attach_pseudo

# Three configs per loss (the defaults plus two variations); every entry resolves at VOC defaults.
CONFIGS: dict[str, list[dict[str, object]]] = {
    "bce": [{}, {"eps": 1e-3}, {"eps": 1e-7}],
    "an": [{}, {"eps": 1e-3}, {"eps": 1e-7}],
    "an_ls": [{}, {"ls_coef": 0.3}, {"ls_coef": 0.0}],
    "wan": [{}, {"eps": 1e-3}, {"eps": 1e-6}],
    "epr": [{}, {"expected_num_pos": 3.0}, {"expected_num_pos": 0.5}],
    "role": [{}, {"expected_num_pos": 3.0}, {"expected_num_pos": 0.5}],
    "ll_r": [{}, {"delta_rel": 0.2}, {"delta_rel": 1.0}],
    "ll_ct": [{}, {"delta_rel": 0.5}, {"delta_rel": 1.0}],
    "ll_cp": [{}, {"delta_rel": 0.5}, {"delta_rel": 1.0}],
    "em": [{}, {"alpha": 0.5}, {"alpha": 0.01}],
    "em_apl": [{}, {"beta": 0.3, "theta": 0.5}, {"alpha": 0.3}],
    "focal": [{}, {"gamma": 0.5}, {"gamma": 0.0}],
    "asl": [{}, {"gamma_pos": 1.0, "clip": 0.0}, {"gamma_neg": 2.0, "clip": 0.2}],
    "hill": [{}, {"lamb": 2.0, "margin": 0.5}, {"gamma": 0.0}],
    "splc": [{}, {"change_epoch": 3, "tau": 0.5}, {"margin": 0.0, "gamma": 1.0}],
    "gr": [{}, {"q2": 0.5, "q3": 1.5, "lag": False, "linear_init": 1}, {"use_k": False, "use_v": False}],
}

Step = Callable[[int], None]


def make_batches(n: int, c: int, b: int, m: int, count: int, device: torch.device, dtype: torch.dtype,
                 gen: torch.Generator) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
    """The (N, C) observed matrix and ``count`` batches of (index (B,), observed (B, C), logits (M, B, C))."""
    observed = torch.zeros(n, c)
    observed[torch.arange(n), torch.randint(0, c, (n,), generator=gen)] = 1
    batches = []
    for _ in range(count):
        idx = torch.randperm(n, generator=gen)[:b]
        logits = (torch.randn(m, b, c, generator=gen) * 3).to(device=device, dtype=dtype)
        batches.append((idx.to(device), observed[idx].to(device), logits.requires_grad_(True)))
    return observed.to(device), batches


def loss_step(name: str, args: argparse.Namespace, observed: Tensor,
              batches: list[tuple[Tensor, Tensor, Tensor]], device: torch.device, dtype: torch.dtype) -> Step:
    """One forward + backward of loss ``name``'s batched form on batch ``i % len(batches)``."""
    n, c = observed.shape
    configs = CONFIGS.get(name, [{}, {}, {}])[: args.configs]  # a plugin: its defaults
    loss = build_batched_loss(name, configs, num_classes=c, num_train=n, dataset="voc",
                              path="plain" if args.path == "plain" else "auto")
    loss = loss.to(device=device, dtype=dtype)
    loss.init_state(observed, 0)
    source = getattr(loss, "pseudo_source", "")
    if source:  # a CLIP pseudo-label loss (VLPL, AEVLP): synthetic cached cosines, CLIP's typical 0.15-0.35
        views = max(loss.views(h) for h in loss.hparams)
        cos = 0.15 + 0.2 * torch.rand(n, 2, views, c, generator=torch.Generator().manual_seed(2))
        attach_pseudo(loss, {source: cos.to(device)})
    loss.start_epoch(args.epoch, args.epochs)
    if name == "em_apl":  # give it pseudo-labels, as mid-training
        gen = torch.Generator().manual_seed(1)
        head = torch.randn(len(configs), n, c, generator=gen).to(device=device, dtype=dtype)
        loss.end_epoch(lambda: head)
    params = [p for group in loss.param_groups(1.0) for p in group["params"]]

    if args.path == "fused" and loss.fused_grad:
        def fused_step(i: int) -> None:
            idx, obs, logits = batches[i % len(batches)]
            for p in params:
                p.grad = None
            loss.value_and_grad(logits.detach(), obs, idx)

        return fused_step

    def step(i: int) -> None:
        idx, obs, logits = batches[i % len(batches)]
        logits.grad = None
        for p in params:
            p.grad = None
        loss(logits, obs, idx).sum().backward()

    return step


def baseline_step(batches: list[tuple[Tensor, Tensor, Tensor]]) -> Step:
    """Plain per-entry AN BCE: ``binary_cross_entropy_with_logits`` on (M, B, C), mean over B x C."""

    def step(i: int) -> None:
        _, obs, logits = batches[i % len(batches)]
        logits.grad = None
        target = obs.unsqueeze(0).expand_as(logits)
        F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(-2, -1)).sum().backward()

    return step


def time_steps(steps_by_name: dict[str, Step], steps: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Best-of-``rounds`` microseconds per step of each entry, rounds interleaved across entries.

    Every entry runs ``steps // rounds`` steps per round, one entry after the other, so a burst of
    load from other jobs hits all entries alike instead of one. On the CPU the clock is process
    CPU time (``time.process_time``: exact for ``--threads 1``); on CUDA wall time with
    synchronisation.
    """
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    per_round = max(1, steps // rounds)
    for step in steps_by_name.values():
        for i in range(min(50, per_round)):
            step(i)
    best = dict.fromkeys(steps_by_name, float("inf"))
    for r in range(rounds):
        for name, step in steps_by_name.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = clock()
            for i in range(per_round):
                step(r * per_round + i)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], (clock() - t0) / per_round)
    return {name: t * 1e6 for name, t in best.items()}


def main() -> None:
    """Parse arguments, time every loss and the baseline, print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000, help="steps per loss (split into rounds)")
    ap.add_argument("--rounds", type=int, default=20, help="timing rounds; the best is reported")
    ap.add_argument("--configs", type=int, default=3, help="M, configs per batched loss (1-3)")
    ap.add_argument("--batch", type=int, default=8, help="B")
    ap.add_argument("--classes", type=int, default=20, help="C (20 = VOC)")
    ap.add_argument("--train", type=int, default=4576, help="N, training rows (stateful losses)")
    ap.add_argument("--epoch", type=int, default=6, help="1-based epoch the schedules are set to")
    ap.add_argument("--epochs", type=int, default=25, help="number of epochs of the schedules")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: leave as is)")
    ap.add_argument("--losses", default="", help="comma-separated subset (default: every registered loss)")
    ap.add_argument("--path", default="autograd", choices=["autograd", "fused", "plain"],
                    help="autograd: forward + backward; fused: value_and_grad where the loss has it (as the linear "
                         "trainer calls it); plain: the plain formula's batched form, forward + backward")
    ap.add_argument("--plugin", action="append", default=[], help="a plugin file or module (repeatable)")
    args = ap.parse_args()
    for spec in args.plugin:
        load_plugin(spec)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    m = min(args.configs, 3)
    gen = torch.Generator().manual_seed(0)
    observed, batches = make_batches(args.train, args.classes, args.batch, m, 64, device, dtype, gen)
    names = [s for s in args.losses.split(",") if s] or list_losses()

    steps_by_name = {"baseline": baseline_step(batches)}
    for name in names:
        steps_by_name[name] = loss_step(name, args, observed, batches, device, dtype)
    us = time_steps(steps_by_name, args.steps, args.rounds, device)
    base = us["baseline"]
    print(f"device={device} dtype={args.dtype} M={m} B={args.batch} C={args.classes} N={args.train} "
          f"epoch={args.epoch}/{args.epochs} steps={args.steps} rounds={args.rounds} threads={torch.get_num_threads()} "
          f"path={args.path} "
          f"clock={'wall' if device.type == 'cuda' else 'process cpu'}")
    print(f"{'loss':<14} {'us/step':>9} {'x AN-BCE':>9}")
    total = sum(us[name] for name in names)
    for name in names:
        print(f"{name:<14} {us[name]:9.1f} {us[name] / base:9.2f}")
    print(f"{'baseline':<14} {base:9.1f} {1.0:9.2f}   (plain F.binary_cross_entropy_with_logits, AN)")
    print(f"{'total':<14} {total:9.1f} {total / base:9.2f}   ({len(names)} losses, us per step summed)")


if __name__ == "__main__":
    main()
