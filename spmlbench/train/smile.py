"""SMILE's own trainer on cached features (linear mode): the kNN graph, the GCN label-enhancement model, the
Beta latent, the MLP classifier and two Adam optimisers, as palm-ml/smile@8feb9b8 ``train_smile2.py``.

The formulas are in :mod:`spmlbench.losses.builtin.smile`. Matched seeds: the classifier sees the same
minibatches as every other loss of the seed (:func:`spmlbench.train.seeding.epoch_orders`); the modules' init
and the Beta samples are drawn under the seed. The graph: each training row's ``k`` nearest other rows
(Euclidean, computed in row chunks, so COCO's 65k rows need no N x N matrix), edges row -> neighbour, and
DGL's ``GraphConv(norm="both")``: a message from i to j scaled by ``out_deg(i)^-1/2 in_deg(j)^-1/2``
(degrees clamped to >= 1; a row nobody chose gets its bias only).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from spmlbench.train.configs import EpochProgress, LinearData, ProgressFn, TrainConfig
from spmlbench.train.early_stop import EarlyStop
from spmlbench.train.evaluate import average_precision, mean_ap
from spmlbench.train.result import TrainResult
from spmlbench.train.seeding import epoch_orders

CHUNK = 2048  # rows per block of the distance computation


def knn_graph(x: Tensor, k: int, chunk: int = CHUNK) -> Tensor:
    """``(N, k)``: the indices of each row's ``k`` nearest other rows (Euclidean), nearest first."""
    sq = (x * x).sum(dim=1)
    out = []
    for lo in range(0, x.shape[0], chunk):
        block = x[lo:lo + chunk]
        d = sq[lo:lo + chunk, None] + sq[None, :] - 2 * block @ x.t()
        d[torch.arange(block.shape[0]), torch.arange(lo, lo + block.shape[0])] = float("inf")  # not itself
        out.append(torch.topk(d, k, dim=1, largest=False).indices)
    return torch.cat(out)


class GraphConv(nn.Module):
    """DGL's ``GraphConv(norm="both", allow_zero_in_degree=True)`` over edges ``src -> dst``."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(d_in, d_out)))
        self.bias = nn.Parameter(torch.zeros(d_out))

    def forward(self, h: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        n = h.shape[0]
        out_deg = torch.bincount(src, minlength=n).clamp_min(1).to(h.dtype)
        in_deg = torch.bincount(dst, minlength=n).clamp_min(1).to(h.dtype)
        msg = (h * out_deg.rsqrt()[:, None])[src]
        agg = torch.zeros(n, h.shape[1], dtype=h.dtype, device=h.device).index_add_(0, dst, msg)
        return (agg * in_deg.rsqrt()[:, None]) @ self.weight + self.bias


def mlp(d_in: int, d_out: int) -> nn.Module:
    """The released ``MLPNet``: Linear(d_in, d_out), ReLU, Linear(d_out, d_out)."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.ReLU(), nn.Linear(d_out, d_out))


class SMILEModels(nn.Module):
    """Classifier ``f`` (d -> C -> C), GCN (d -> C -> C, then Linear C -> C), ``encoder_z`` (d + C -> C) and the
    decoder (2C -> d); hidden width C, as released."""

    def __init__(self, d: int, c: int) -> None:
        super().__init__()
        self.f = mlp(d, c)
        self.conv1, self.conv2, self.fc = GraphConv(d, c), GraphConv(c, c), nn.Linear(c, c)
        self.encoder_z = mlp(d + c, c)
        self.decoder = mlp(2 * c, d)

    def gcn(self, x: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """GCN logits of every training row."""
        return self.fc(self.conv2(torch.relu(self.conv1(x, src, dst)), src, dst))


def train_smile(data: LinearData, config: TrainConfig, *, device: str | torch.device = "cpu",
                progress: ProgressFn | None = None) -> TrainResult:
    """Train one SMILE config; val mAP of the classifier every epoch, test at the best val epoch."""
    from spmlbench.losses import build_batched_loss, resolve_hparams
    from spmlbench.losses.builtin.smile import inference_loss

    dev = torch.device(device)
    hp = resolve_hparams(config.loss, data.dataset, **config.hparams_dict())
    x, s = data.x_train.to(dev), data.s_train.to(dev) > 0.5
    n, d = x.shape
    c = data.num_classes
    nbrs = knn_graph(x, hp.k)
    src, dst = torch.arange(n, device=dev).repeat_interleave(hp.k), nbrs.flatten()
    loss = build_batched_loss(config.loss, [hp], num_classes=c, num_train=n).to(dev)
    val_labels = (data.y_val if config.val == "clean" else data.s_val).to(dev)
    result, rule = TrainResult(), EarlyStop(config.early_stop)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(config.seed)
        models = SMILEModels(d, c).to(dev)
        mlp_opt = torch.optim.Adam(models.f.parameters(), lr=config.lr)
        gcn_opt = torch.optim.Adam([*models.conv1.parameters(), *models.conv2.parameters(), *models.fc.parameters(),
                                    *models.decoder.parameters(), *models.encoder_z.parameters()], lr=config.lr)
        best = copy.deepcopy(models.f.state_dict())
        for epoch, order in enumerate(epoch_orders(config.seed, n, config.epochs, d, c), start=1):
            total, steps = 0.0, 0
            for idx in torch.split(order.to(dev), config.batch_size):
                xb, sb = x[idx], s[idx]
                d1 = torch.sigmoid(models.gcn(x, src, dst)[idx] / hp.T)
                loss.d1[0, idx] = d1.detach()
                value = loss(models.f(xb).unsqueeze(0), sb, idx)[0]
                mlp_opt.zero_grad()
                value.backward()
                mlp_opt.step()
                h = models.encoder_z(torch.cat([xb, d1], dim=1))
                x_rec = models.decoder(torch.cat([d1, h], dim=1))
                y_rec = torch.distributions.Beta(d1 + 1e-5, 1 - d1 + 1e-5).rsample()
                adj = (nbrs[idx][:, :, None] == idx[None, None, :]).any(dim=1).float()  # A[idx][:, idx]
                gcn_opt.zero_grad()
                inference_loss(hp, xb, sb, d1, adj, x_rec, y_rec).backward()
                gcn_opt.step()
                total, steps = total + float(value.detach()), steps + 1
            with torch.no_grad():
                val = float(mean_ap(torch.sigmoid(models.f(data.x_val.to(dev)) / hp.T), val_labels))
            result.val_map.append(val)
            result.train_loss.append(total / max(steps, 1))
            result.epochs_run = epoch
            if rule.update(epoch, val):
                result.best_epoch = epoch
                best = copy.deepcopy(models.f.state_dict())
            if progress is not None:
                progress(EpochProgress(epoch, config.epochs, 1, rule.best))
            if rule.stopped:
                break
        models.f.load_state_dict(best)
        with torch.no_grad():
            ap = average_precision(torch.sigmoid(models.f(data.x_test.to(dev)) / hp.T), data.y_test.to(dev)).cpu()
    result.test_ap = [float(a) for a in ap * 100.0]
    result.test_map = float(ap.mean() * 100.0)
    return result
