"""SMILE's own trainer on cached features (linear mode), as palm-ml/smile@8feb9b8 ``train_smile2.py``: the kNN
graph of the training features, the GCN label-enhancement model, the Beta latent and the MLP classifier.

The models and the formulas are in :mod:`spmlbench.losses.builtin.smile` (one implementation for both modes:
e2e trains the same loss with the backbone's pooled features, :mod:`spmlbench.train.e2e`). Here the bank is the
cached features, fixed, and the graph is built once. The released code steps two Adam optimisers (classifier;
GCN + encoder + decoder) one after the other at one lr; their parameters are disjoint and neither loss reaches
the other's, so the one Adam here takes the same steps (tested against a two-optimiser loop).

Matched seeds: the classifier sees the same minibatches as every other loss of the seed
(:func:`spmlbench.train.seeding.epoch_orders`); the models' init and the Beta samples are drawn under the seed.
"""

from __future__ import annotations

import torch

from spmlbench.heads import method_of
from spmlbench.train.configs import LinearData, ProgressFn, TrainConfig
from spmlbench.train.engine import BestModule, Member, fit
from spmlbench.train.evaluate import average_precision, mean_ap
from spmlbench.train.result import TrainResult
from spmlbench.train.seeding import epoch_orders
from spmlbench.train.trainers import register_trainer


def train_smile(data: LinearData, config: TrainConfig, *, device: str | torch.device = "cpu",
                progress: ProgressFn | None = None) -> TrainResult:
    """Train one SMILE config; val mAP of the classifier every epoch, test at the best val epoch. The train
    loss is the classifier's plus the inference model's."""
    from spmlbench.losses import build_batched_loss, resolve_hparams

    dev = torch.device(device)
    hp = resolve_hparams(config.loss, data.dataset, **config.hparams_dict())
    x, s = data.x_train.to(dev), data.s_train.to(dev) > 0.5
    n, d = x.shape
    loss = build_batched_loss(config.loss, [hp], num_classes=data.num_classes, num_train=n)
    loss.attach_model(d, config.seed)
    loss.to(dev)
    loss.build_graph(lambda: x)
    f = method_of(config.loss).head.build(d, data.num_classes, config.seed, hp).to(dev)  # the classifier, seeded
    optimizer = torch.optim.Adam([{"params": list(f.parameters())}, *loss.param_groups(config.lr)], lr=config.lr)
    val_labels = (data.y_val if config.val == "clean" else data.s_val).to(dev)
    best = BestModule(f)
    orders = epoch_orders(config.seed, n, config.epochs, d, data.num_classes)

    def step(epoch: int, _active: list[int]) -> list[float]:
        total, steps = torch.zeros((), device=dev), 0
        for idx in torch.split(orders[epoch - 1].to(dev), config.batch_size):
            value = loss(f(x[idx]).unsqueeze(0), s[idx], idx, features=x[idx])[0]
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            total, steps = total + value.detach(), steps + 1
        return [float(total) / max(steps, 1)]

    def evaluate(epoch: int, _trained: list[int]) -> list[float]:
        with torch.no_grad():
            return [float(mean_ap(torch.sigmoid(f(data.x_val.to(dev)) / hp.T), val_labels))]

    def test(_members: list[int]) -> list[tuple[float, list[float]]]:
        best.restore()
        with torch.no_grad():
            ap = average_precision(torch.sigmoid(f(data.x_test.to(dev)) / hp.T), data.y_test.to(dev)).cpu()
        return [(float(ap.mean() * 100.0), [float(a) for a in ap * 100.0])]

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)  # the Beta samples
        (result,) = fit([Member(config.epochs, config.early_stop)], step=step, evaluate=evaluate,
                        keep_best=best.keep_best, test=test, progress=progress)
    return result


register_trainer("smile", train_smile)
