"""The reference path: a plain one-config-at-a-time training loop (``spmlbench run --reference-loop``).

Written the way the papers' trainers are: a ``DataLoader`` over a ``TensorDataset``, an
``nn.Linear`` head, ``torch.optim.Adam`` and the loss's per-config form. It uses the same matched
seeds as the batched path (:mod:`spmlbench.train.seeding`), so both must give the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spmlbench.train.configs import (
    LinearData,
    ProgressFn,
    TrainConfig,
    check_config,
    uses_clean_labels,
)
from spmlbench.train.engine import BestModule, Failure, Member, fit
from spmlbench.train.evaluate import average_precision, mean_ap
from spmlbench.train.result import TrainResult
from spmlbench.train.seeding import epoch_orders, head_init


def train_reference(
    data: LinearData,
    configs: Sequence[TrainConfig],
    *,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    max_steps: int | None = None,
) -> list[TrainResult]:
    """Train each config on its own with the reference loop; one :class:`TrainResult` per config (on a CPU with
    denormals flushed, as the batched trainer: :func:`spmlbench.runtime.flush_denormals`). ``max_steps``:
    end each epoch after that many steps (benchmarks time a sample of steps and scale it)."""
    from spmlbench.runtime import flush_denormals

    with flush_denormals(device):
        return [train_one(data, c, device=device, progress=progress, max_steps=max_steps) for c in configs]


def train_one(
    data: LinearData, config: TrainConfig, *, device: str | torch.device = "cpu", progress: ProgressFn | None = None,
    max_steps: int | None = None,
) -> TrainResult:
    """Train one config: DataLoader + nn.Linear + torch.optim.Adam + the per-config loss (``max_steps``: per
    epoch, at most)."""
    from spmlbench.losses import build_loss

    check_config(config)
    dev = torch.device(device)
    n, d, c = data.x_train.shape[0], data.dim, data.num_classes
    observed_train = data.y_train if uses_clean_labels(config.loss) else data.s_train
    loss = build_loss(config.loss, num_classes=c, num_train=n, dataset=data.dataset, **config.hparams_dict()).to(dev)
    loss.init_state(observed_train.to(dev), config.seed)
    head = nn.Linear(d, c).to(dev)
    weight, bias = head_init(config.seed, d, c)
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    optimizer = torch.optim.Adam([{"params": head.parameters(), "lr": config.lr}, *loss.param_groups(config.lr)],
                                 lr=config.lr)
    orders = epoch_orders(config.seed, n, config.epochs, d, c)
    dataset = TensorDataset(data.x_train, observed_train, torch.arange(n))
    x_train, x_val, x_test = data.x_train.to(dev), data.x_val.to(dev), data.x_test.to(dev)
    y_val = (data.y_val if config.val == "clean" else data.s_val).to(dev)
    best = BestModule(head)

    def step(epoch: int, _active: list[int]) -> list[float | Failure]:
        loss.start_epoch(epoch, config.epochs)
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=orders[epoch - 1].tolist())
        total, steps = 0.0, 0
        head.train()
        for t, (xb, sb, ib) in enumerate(loader, start=1):
            xb, sb, ib = xb.to(dev), sb.to(dev), ib.to(dev)
            logits = head(xb)
            if not bool(torch.isfinite(logits).all()):
                return [Failure(f"non-finite logits in epoch {epoch} at step {t}")]
            value = loss(logits, sb, ib)
            if not math.isfinite(float(value.detach())):
                return [Failure(f"non-finite loss in epoch {epoch} at step {t}")]
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            total += float(value.detach())
            steps += 1
            if max_steps is not None and steps >= max_steps:
                break
        return [total / max(steps, 1)]

    def evaluate(epoch: int, _trained: list[int]) -> list[float]:
        head.eval()
        with torch.no_grad():
            loss.end_epoch(lambda: head(x_train))
            return [float(mean_ap(torch.sigmoid(head(x_val)), y_val))]

    def test(_members: list[int]) -> list[tuple[float, list[float]]]:
        best.restore()
        with torch.no_grad():
            ap = average_precision(torch.sigmoid(head(x_test)), data.y_test.to(dev)).cpu() * 100.0
        return [(float(ap.mean()), [float(a) for a in ap])]

    (result,) = fit([Member(config.epochs, config.early_stop)], step=step, evaluate=evaluate,
                    keep_best=best.keep_best, test=test, progress=progress)
    return result
