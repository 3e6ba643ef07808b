"""Heads other than the linear probe trained on cached inputs (linear mode), one config at a time:

* a head that consumes the backbone's feature map (BoostLU's frozen variant) on the cached layer4 maps
  (:mod:`spmlbench.features.maps`); with ``alpha = 1`` BoostLU trains the plain linear probe on the
  average-pooled maps;
* a head on pooled features (``mime_vib``'s variational bottleneck, a re-design of MIME's head) on the cached
  pooled features.

Matched seeds as in the linear trainer: the head's init and every epoch's minibatches come from the seed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from spmlbench.errors import ConfigError
from spmlbench.heads import CACHED
from spmlbench.train.configs import LinearData, ProgressFn, TrainConfig, uses_clean_labels
from spmlbench.train.engine import BestModule, Member, fit
from spmlbench.train.evaluate import average_precision, mean_ap
from spmlbench.train.result import TrainResult
from spmlbench.train.seeding import epoch_orders
from spmlbench.train.trainers import register_trainer

EVAL_ROWS = 256
Rows = Callable[[str, np.ndarray], torch.Tensor]  # (split, positions in the split) -> float32 inputs


def _map_rows(data: LinearData, device: torch.device) -> Rows:
    def rows(split: str, idx: np.ndarray) -> torch.Tensor:
        glob = data.split_rows[split][idx]
        order = np.argsort(glob)  # memory-map reads in increasing row order
        block = np.asarray(data.maps[glob[order]], dtype=np.float32)
        out = np.empty_like(block)
        out[order] = block
        return torch.from_numpy(out).to(device)

    return rows


def _pooled_rows(data: LinearData, device: torch.device) -> Rows:
    split_x = {"train": data.x_train, "val": data.x_val, "test": data.x_test}
    return lambda split, idx: split_x[split][torch.as_tensor(idx, dtype=torch.long)].to(device)


@torch.no_grad()
def _scores(head: nn.Module, rows: Rows, n: int, split: str, c: int, device: torch.device) -> torch.Tensor:
    parts = [torch.sigmoid(head(rows(split, np.arange(lo, min(lo + EVAL_ROWS, n))))) for lo in range(0, n, EVAL_ROWS)]
    return torch.cat(parts) if parts else torch.zeros(0, c, device=device)


def train_head(data: LinearData, config: TrainConfig, head: nn.Module, rows: Rows, *, device: torch.device,
               progress: ProgressFn | None = None) -> TrainResult:
    """Train ``head`` on ``rows`` with the config's loss (Adam, the config's lr; a head's ``penalty()`` is added)."""
    from spmlbench.losses import build_batched_loss, resolve_hparams

    hp = resolve_hparams(config.loss, data.dataset, **config.hparams_dict())
    n, c = data.x_train.shape[0], data.num_classes
    sizes = {"train": n, "val": data.x_val.shape[0], "test": data.x_test.shape[0]}
    loss = build_batched_loss(config.loss, [hp], num_classes=c, num_train=n).to(device)
    target = (data.y_train if uses_clean_labels(config.loss) else data.s_train).to(device) > 0.5
    loss.init_state(target.float(), [config.seed])
    groups = [{"params": list(head.parameters()), "lr": config.lr}]
    groups += [{**g, "lr": config.lr * float(g["lr"])} for g in loss.param_groups(1.0)]
    opt = torch.optim.Adam(groups, lr=config.lr)
    penalty = getattr(head, "penalty", lambda: 0.0)
    val_labels = (data.y_val if config.val == "clean" else data.s_val).to(device)
    best = BestModule(head)
    orders = epoch_orders(config.seed, n, config.epochs, data.dim, c)

    def step(epoch: int, _active: list[int]) -> list[float]:
        loss.start_epoch(epoch, config.epochs)
        head.train()
        total, steps = 0.0, 0
        for idx in torch.split(orders[epoch - 1], config.batch_size):
            dev_idx = idx.to(device)
            value = loss(head(rows("train", idx.numpy())).unsqueeze(0), target[dev_idx], dev_idx)[0] + penalty()
            opt.zero_grad()
            value.backward()
            opt.step()
            total, steps = total + float(value.detach()), steps + 1
        return [total / max(steps, 1)]

    def evaluate(epoch: int, _trained: list[int]) -> list[float]:
        head.train(loss.predict_in_train_mode())
        loss.end_epoch(lambda: _scores(head, rows, n, "train", c, device).logit().unsqueeze(0))
        head.eval()
        return [float(mean_ap(_scores(head, rows, sizes["val"], "val", c, device), val_labels))]

    def test(_members: list[int]) -> list[tuple[float, list[float]]]:
        best.restore()
        ap = average_precision(_scores(head, rows, sizes["test"], "test", c, device), data.y_test.to(device)).cpu()
        return [(float(ap.mean() * 100.0), [float(a) for a in ap * 100.0])]

    (result,) = fit([Member(config.epochs, config.early_stop)], step=step, evaluate=evaluate,
                    keep_best=best.keep_best, test=test, progress=progress)
    return result


def train_cached_head(data: LinearData, config: TrainConfig, *, device: str | torch.device = "cpu",
                      progress: ProgressFn | None = None) -> TrainResult:
    """One config of a method whose head trains on cached inputs (its head's ``consumes``: the layer4 maps or the
    pooled features). The head is built, and trained, under the config's seed (its init and any sampling)."""
    from spmlbench.heads import method_of
    from spmlbench.losses import resolve_hparams

    head_def = method_of(config.loss).head
    maps = head_def.consumes == "map"
    if maps and data.maps is None:
        raise ConfigError(f"{config.loss}: linear mode trains the {head_def.name} head on cached layer4 maps; run "
                          f"'spmlbench features {data.dataset} --maps' first")
    dev = torch.device(device)
    hp = resolve_hparams(config.loss, data.dataset, **config.hparams_dict())
    dim = int(data.maps.shape[1]) if maps else data.dim
    rows = _map_rows(data, dev) if maps else _pooled_rows(data, dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        head = head_def.build(dim, data.num_classes, config.seed, hp).to(dev)
        return train_head(data, config, head, rows, device=dev, progress=progress)


register_trainer(CACHED, train_cached_head)
