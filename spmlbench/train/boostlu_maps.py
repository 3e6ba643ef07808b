"""BoostLU's frozen-backbone variant (linear mode): the BoostLU head (:class:`~spmlbench.train.e2e_model.
BoostLUHead`) trained on cached layer4 maps (:mod:`spmlbench.features.maps`) with the job's LL loss, for where
no end-to-end fine-tuning is possible. The head's init and every epoch's minibatches come from the seed
exactly as in the linear trainer (matched seeds); with ``alpha = 1`` it trains the plain linear probe on the
average-pooled maps."""

from __future__ import annotations

import copy

import numpy as np
import torch

from spmlbench.errors import ConfigError
from spmlbench.train.configs import EpochProgress, LinearData, ProgressFn, TrainConfig, uses_clean_labels
from spmlbench.train.e2e_model import BoostLUHead
from spmlbench.train.early_stop import EarlyStop
from spmlbench.train.evaluate import average_precision, mean_ap
from spmlbench.train.result import TrainResult
from spmlbench.train.seeding import epoch_orders, head_init

EVAL_ROWS = 256


def _rows(data: LinearData, split: str, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """float32 maps of split rows ``idx`` (positions in the split)."""
    glob = data.split_rows[split][idx]
    order = np.argsort(glob)  # memory-map reads in increasing row order
    block = np.asarray(data.maps[glob[order]], dtype=np.float32)
    out = np.empty_like(block)
    out[order] = block
    return torch.from_numpy(out).to(device)


@torch.no_grad()
def _scores(head: BoostLUHead, data: LinearData, split: str, device: torch.device) -> torch.Tensor:
    n = len(data.split_rows[split])
    parts = [torch.sigmoid(head(_rows(data, split, np.arange(lo, min(lo + EVAL_ROWS, n)), device)))
             for lo in range(0, n, EVAL_ROWS)]
    return torch.cat(parts) if parts else torch.zeros(0, data.num_classes, device=device)


def train_boostlu_maps(data: LinearData, config: TrainConfig, *, device: str | torch.device = "cpu",
                       progress: ProgressFn | None = None) -> TrainResult:
    """Train one config of a BoostLU loss on the cached maps; test at the best val epoch."""
    from spmlbench.losses import build_batched_loss, resolve_hparams

    if data.maps is None:
        raise ConfigError(f"{config.loss}: linear mode trains the BoostLU head on cached layer4 maps; run "
                          f"'spmlbench features {data.dataset} --maps' first")
    dev = torch.device(device)
    hp = resolve_hparams(config.loss, data.dataset, **config.hparams_dict())
    n, c = len(data.split_rows["train"]), data.num_classes
    d = int(data.maps.shape[1])
    head = BoostLUHead(d, c, float(getattr(hp, "alpha", 1.0))).to(dev)
    w, b = head_init(config.seed, d, c)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    loss = build_batched_loss(config.loss, [hp], num_classes=c, num_train=n).to(dev)
    target = (data.y_train if uses_clean_labels(config.loss) else data.s_train).to(dev) > 0.5
    loss.init_state(target.float(), [config.seed])
    groups = [{"params": list(head.parameters()), "lr": config.lr}]
    groups += [{**g, "lr": config.lr * float(g["lr"])} for g in loss.param_groups(1.0)]
    opt = torch.optim.Adam(groups, lr=config.lr)
    val_labels = (data.y_val if config.val == "clean" else data.s_val).to(dev)
    result, rule = TrainResult(), EarlyStop(config.early_stop)
    best = copy.deepcopy(head.state_dict())
    for epoch, order in enumerate(epoch_orders(config.seed, n, config.epochs, d, c), start=1):
        loss.start_epoch(epoch, config.epochs)
        total, steps = 0.0, 0
        for idx in torch.split(order, config.batch_size):
            value = loss(head(_rows(data, "train", idx.numpy(), dev)).unsqueeze(0), target[idx.to(dev)],
                         idx.to(dev))[0]
            opt.zero_grad()
            value.backward()
            opt.step()
            total, steps = total + float(value.detach()), steps + 1
        loss.end_epoch(lambda: _scores(head, data, "train", dev).logit().unsqueeze(0))
        val = float(mean_ap(_scores(head, data, "val", dev), val_labels))
        result.val_map.append(val)
        result.train_loss.append(total / max(steps, 1))
        result.epochs_run = epoch
        if rule.update(epoch, val):
            result.best_epoch = epoch
            best = copy.deepcopy(head.state_dict())
        if progress is not None:
            progress(EpochProgress(epoch, config.epochs, 1, rule.best))
        if rule.stopped:
            break
    head.load_state_dict(best)
    ap = average_precision(_scores(head, data, "test", dev), data.y_test.to(dev)).cpu()
    result.test_ap = [float(a) for a in ap * 100.0]
    result.test_map = float(ap.mean() * 100.0)
    return result
