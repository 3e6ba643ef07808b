"""Linear probes on cached features: many configs (losses x seeds x grid points) trained at once.

The head of config ``m`` is ``W[m] (D, C)``, ``b[m] (C,)``; configs that share a seed share their
minibatches (matched seeds, :mod:`spmlbench.train.seeding`) and are one *seed group*. A step
computes each seed group's logits with one batched matmul ``(B, D) x (M_g, D, C)``, evaluates each
loss's batched form once per seed group, back-propagates the sum of all per-config losses (configs
are independent, so each gets exactly its own gradient) and takes one Adam step with a per-config
learning rate. Val mAP is computed for every config at the end of every epoch; early stopping
freezes a config's results after its stop epoch (equivalent to stopping it). Non-finite loss or
logits mark that config failed (epoch, step, which) and the others continue.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from spmlbench.errors import ConfigError
from spmlbench.train.evaluate import average_precision, mean_ap
from spmlbench.train.optim import BatchedAdam
from spmlbench.train.seeding import epoch_orders, head_init, num_steps

VAL_MODES = ("clean", "observed")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One linear-probe run: loss, its hyperparameters (name -> value), seed and optimisation settings.

    ``early_stop``: ``none`` (best val epoch), ``no_improve`` (stop at the first epoch whose val mAP
    does not improve), or ``drop:<points>`` (stop once val mAP falls more than that below the best).
    """

    loss: str
    hparams: tuple[tuple[str, Any], ...] = ()
    seed: int = 0
    lr: float = 1e-4
    batch_size: int = 8
    epochs: int = 25
    early_stop: str = "none"
    val: str = "clean"

    def hparams_dict(self) -> dict[str, Any]:
        """The hyperparameters as a dict (lists for sequence values)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.hparams}


def freeze_hparams(hparams: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Sorted, hashable ``(name, value)`` pairs (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in hparams.items()))


@dataclasses.dataclass
class ConfigResult:
    """What one config produced: per-epoch curves, the best-val epoch and test AP at that epoch."""

    status: str = "ok"  # ok | failed
    error: str | None = None
    epochs_run: int = 0
    best_epoch: int = 0
    val_map: list[float] = dataclasses.field(default_factory=list)
    train_loss: list[float] = dataclasses.field(default_factory=list)
    test_map: float = float("nan")
    test_ap: list[float] = dataclasses.field(default_factory=list)


class EarlyStop:
    """Tracks one config's val mAP: the best epoch and whether its rule stops training."""

    def __init__(self, rule: str) -> None:
        self.rule = rule
        self.drop = parse_early_stop(rule)
        self.best = -math.inf
        self.best_epoch = 0
        self.stopped = False

    def update(self, epoch: int, value: float) -> bool:
        """Record epoch ``epoch``'s val mAP; return True when it is the new best."""
        improved = value > self.best
        if self.rule == "no_improve" and not improved and self.best_epoch > 0:
            self.stopped = True
        if improved:
            self.best, self.best_epoch = value, epoch
        if self.drop is not None and value < self.best - self.drop:
            self.stopped = True
        return improved


def parse_early_stop(rule: str) -> float | None:
    """Validate an early-stop rule; return the drop in points for ``drop:<x>``, else None."""
    if rule in ("none", "no_improve"):
        return None
    if rule.startswith("drop:"):
        try:
            drop = float(rule[5:])
        except ValueError:
            drop = -1.0
        if drop >= 0 and math.isfinite(drop):
            return drop
    raise ConfigError(f"early_stop={rule!r}: unknown rule; use none, no_improve or drop:<points>")


@dataclasses.dataclass
class LinearData:
    """Split features (float32, loaded once) and 0/1 float32 label matrices of one dataset."""

    dataset: str
    x_train: Tensor
    x_val: Tensor
    x_test: Tensor
    y_train: Tensor  # clean
    s_train: Tensor  # observed single positives
    y_val: Tensor
    s_val: Tensor
    y_test: Tensor

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return int(self.y_train.shape[1])

    @property
    def dim(self) -> int:
        """Feature dimension D."""
        return int(self.x_train.shape[1])

    def to(self, device: torch.device | str) -> LinearData:
        """The same data on ``device``."""
        return LinearData(self.dataset, *(getattr(self, f.name).to(device) for f in dataclasses.fields(self)[1:]))


def linear_data(dataset: str, features: np.ndarray, labels: Any) -> LinearData:
    """Build :class:`LinearData` from (N, D) features and a labels DataFrame (``split``, ``labels``, ``observed``)."""
    from spmlbench.data.store import label_matrix

    if features.shape[0] != len(labels):
        raise ValueError(f"{dataset}: {features.shape[0]} feature rows but {len(labels)} label rows")
    split = labels["split"].to_numpy()
    feats = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))

    def rows(name: str) -> Tensor:
        return torch.from_numpy(np.flatnonzero(split == name))

    def mat(column: str, name: str) -> Tensor:
        return torch.from_numpy(label_matrix(labels, column, name).astype(np.float32))

    return LinearData(
        dataset=dataset,
        x_train=feats.index_select(0, rows("train")),
        x_val=feats.index_select(0, rows("val")),
        x_test=feats.index_select(0, rows("test")),
        y_train=mat("labels", "train"),
        s_train=mat("observed", "train"),
        y_val=mat("labels", "val"),
        s_val=mat("observed", "val"),
        y_test=mat("labels", "test"),
    )


@dataclasses.dataclass
class EpochProgress:
    """Reported after every epoch of a cohort: configs trained together, epoch, best val mAP so far."""

    epoch: int
    epochs: int
    configs: int
    best_val_map: float


ProgressFn = Callable[[EpochProgress], None]
# (epoch, config indices, sigmoid val scores (M_g, N_val, C) of those configs), once per seed group per epoch
ValHook = Callable[[int, list[int], Tensor], None]


def uses_clean_labels(loss: str) -> bool:
    """Whether the trainer passes the clean labels as ``observed`` (the full-label ``bce``)."""
    from spmlbench.losses import loss_info

    return bool(getattr(loss_info(loss), "uses_clean_labels", False))


def train_linear(
    data: LinearData,
    configs: Sequence[TrainConfig],
    *,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    on_val: ValHook | None = None,
) -> list[ConfigResult]:
    """Train every config (batched); returns one :class:`ConfigResult` per config, in order.

    Configs are run in cohorts of equal ``(batch_size, epochs)``; within a cohort configs of the
    same seed share every minibatch. ``on_val`` (optional) sees every epoch's val scores (prediction
    dumps); it is called for every config every epoch, also after a config stopped early.
    """
    for c in configs:
        _check_config(c)
    results: list[ConfigResult | None] = [None] * len(configs)
    cohorts: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(configs):
        cohorts.setdefault((c.batch_size, c.epochs), []).append(i)
    dev = torch.device(device)
    on_dev = data.to(dev)
    for members in cohorts.values():
        hook = None if on_val is None else (
            lambda e, idx, p, members=members: on_val(e, [members[i] for i in idx], p))
        out = _Cohort(on_dev, [configs[i] for i in members], dev).run(progress, hook)
        for i, r in zip(members, out):
            results[i] = r
    return [r for r in results if r is not None]


def _check_config(c: TrainConfig) -> None:
    if c.val not in VAL_MODES:
        raise ConfigError(f"val={c.val!r}: unknown; use clean or observed")
    parse_early_stop(c.early_stop)
    if c.batch_size < 1 or c.epochs < 1 or not (c.lr > 0 and math.isfinite(c.lr)):
        raise ConfigError(f"{c.loss}: batch_size, epochs and lr must be positive; got "
                          f"{c.batch_size}, {c.epochs}, {c.lr}")


@dataclasses.dataclass
class _LossCall:
    """One batched loss over the configs ``lo:hi`` of a seed group (all with one loss)."""

    loss: Any
    lo: int
    hi: int
    observed: Tensor


@dataclasses.dataclass
class _SeedGroup:
    """Configs sharing a seed (so their minibatches): stacked head and the loss calls."""

    seed: int
    members: list[int]  # positions in the cohort
    weight: Tensor  # (M_g, D, C) leaf
    bias: Tensor  # (M_g, C) leaf
    calls: list[_LossCall]
    val_labels: Tensor  # (M_g, N_val, C)
    orders: list[Tensor]


class _Cohort:
    """Configs with equal batch size and epochs, trained step by step together."""

    def __init__(self, data: LinearData, configs: list[TrainConfig], device: torch.device) -> None:
        from spmlbench.losses import build_batched_loss

        self.data, self.configs, self.device = data, configs, device
        self.epochs = configs[0].epochs
        self.batch_size = configs[0].batch_size
        n, d, c = data.x_train.shape[0], data.dim, data.num_classes
        by_seed: dict[int, list[int]] = {}
        for i, cfg in enumerate(configs):
            by_seed.setdefault(cfg.seed, []).append(i)
        self.groups: list[_SeedGroup] = []
        params: list[Tensor] = []  # loss parameters (ROLE's label logits); heads are prepended below
        lrs: list[list[float]] = []
        for seed, idx in sorted(by_seed.items()):
            # order inside the group: by loss (contiguous slices for the loss calls), then input order
            idx = sorted(idx, key=lambda i: (configs[i].loss, i))
            w0, b0 = head_init(seed, d, c)
            weight = w0.t().contiguous().unsqueeze(0).repeat(len(idx), 1, 1).to(device).requires_grad_(True)
            bias = b0.unsqueeze(0).repeat(len(idx), 1).to(device).requires_grad_(True)
            calls: list[_LossCall] = []
            lo = 0
            while lo < len(idx):
                name = configs[idx[lo]].loss
                hi = lo
                while hi < len(idx) and configs[idx[hi]].loss == name:
                    hi += 1
                hps = [configs[i].hparams_dict() for i in idx[lo:hi]]
                loss = build_batched_loss(name, hps, num_classes=c, num_train=n, dataset=data.dataset)
                loss = loss.to(device)
                observed = data.y_train if uses_clean_labels(name) else data.s_train
                loss.init_state(observed, seed)
                call_lrs = [configs[i].lr for i in idx[lo:hi]]
                for group in loss.param_groups(1.0):
                    mult = float(group["lr"])
                    for p in group["params"]:
                        params.append(p)
                        lrs.append([lr * mult for lr in call_lrs])
                calls.append(_LossCall(loss, lo, hi, observed))
                lo = hi
            val_labels = torch.stack([data.y_val if configs[i].val == "clean" else data.s_val for i in idx])
            self.groups.append(_SeedGroup(seed, idx, weight, bias, calls, val_labels,
                                          [o.to(device) for o in epoch_orders(seed, n, self.epochs, d, c)]))
        heads = [p for g in self.groups for p in (g.weight, g.bias)]
        head_lrs = [[configs[i].lr for i in g.members] for g in self.groups for _ in range(2)]
        # parameter 2k / 2k+1 of the optimizer is seed group k's weight / bias
        self.optimizer = BatchedAdam(heads + params, head_lrs + lrs)

    # -- one epoch ---------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> tuple[Tensor, Tensor, Tensor]:
        """Train one epoch; returns per-group-concatenated (loss sum, first bad step, bad kind)."""
        n = self.data.x_train.shape[0]
        steps = num_steps(n, self.batch_size)
        m_total = sum(len(g.members) for g in self.groups)
        loss_sum = torch.zeros(m_total, device=self.device, dtype=torch.float64)
        first_bad = torch.full((m_total,), -1, dtype=torch.long, device=self.device)
        bad_kind = torch.zeros(m_total, dtype=torch.long, device=self.device)  # 1 logits, 2 loss
        for g in self.groups:
            for call in g.calls:
                call.loss.start_epoch(epoch, self.epochs)
        batches = [torch.split(g.orders[epoch - 1], self.batch_size) for g in self.groups]
        for t in range(steps):
            values = []
            logit_ok = []
            for g, gb in zip(self.groups, batches):
                idx = gb[t]
                xb = self.data.x_train.index_select(0, idx)
                logits = torch.matmul(xb, g.weight) + g.bias.unsqueeze(1)
                logit_ok.append(torch.isfinite(logits.detach()).flatten(1).all(dim=1))
                for call in g.calls:
                    values.append(call.loss(logits[call.lo:call.hi], call.observed.index_select(0, idx), idx))
            vals = torch.cat(values)
            self.optimizer.zero_grad()
            vals.sum().backward()
            self.optimizer.step()
            v = vals.detach()
            loss_sum += v
            lok = torch.cat(logit_ok)
            bad = ~(lok & torch.isfinite(v))
            newly = bad & (first_bad < 0)
            first_bad = torch.where(newly, torch.full_like(first_bad, t + 1), first_bad)
            bad_kind = torch.where(newly, torch.where(lok, 2, 1), bad_kind)
        return loss_sum / steps, first_bad, bad_kind

    @torch.no_grad()
    def _predict(self, g: _SeedGroup, x: Tensor, lo: int = 0, hi: int | None = None) -> Tensor:
        return torch.matmul(x, g.weight[lo:hi]) + g.bias[lo:hi].unsqueeze(1)

    def run(self, progress: ProgressFn | None, on_val: ValHook | None = None) -> list[ConfigResult]:
        """Train the cohort; return results in the cohort's config order."""
        order = [i for g in self.groups for i in g.members]
        m_total = len(order)
        results = [ConfigResult() for _ in range(m_total)]  # in `order` positions
        rules = [EarlyStop(self.configs[i].early_stop) for i in order]
        active = [True] * m_total
        best_w = [g.weight.detach().clone() for g in self.groups]
        best_b = [g.bias.detach().clone() for g in self.groups]
        offsets = np.cumsum([0] + [len(g.members) for g in self.groups])
        for epoch in range(1, self.epochs + 1):
            if not any(active):
                break
            mean_loss, first_bad, bad_kind = self._train_epoch(epoch)
            for g in self.groups:
                for call in g.calls:
                    call.loss.end_epoch(lambda g=g, call=call: self._predict(g, self.data.x_train, call.lo, call.hi))
            with torch.no_grad():
                val_parts = []
                for g in self.groups:
                    probs = torch.sigmoid(self._predict(g, self.data.x_val))
                    val_parts.append(mean_ap(probs, g.val_labels))
                    if on_val is not None:
                        on_val(epoch, list(g.members), probs)
                val = torch.cat(val_parts).cpu().tolist()
            mean_loss_l = mean_loss.cpu().tolist()
            first_bad_l = first_bad.cpu().tolist()
            kind_l = bad_kind.cpu().tolist()
            improved = torch.zeros(m_total, dtype=torch.bool)
            failed_now = torch.zeros(m_total, dtype=torch.bool)
            for j in range(m_total):
                if not active[j]:
                    continue
                r = results[j]
                if first_bad_l[j] >= 0:
                    which = "logits" if kind_l[j] == 1 else "loss"
                    r.status = "failed"
                    r.error = f"non-finite {which} in epoch {epoch} at step {first_bad_l[j]}"
                    active[j] = False
                    failed_now[j] = True
                    continue
                r.val_map.append(float(val[j]))
                r.train_loss.append(float(mean_loss_l[j]))
                r.epochs_run = epoch
                if rules[j].update(epoch, float(val[j])):
                    improved[j] = True
                    r.best_epoch = epoch
                if rules[j].stopped:
                    active[j] = False
            with torch.no_grad():
                for k, g in enumerate(self.groups):
                    sel = improved[offsets[k]:offsets[k + 1]].to(self.device)
                    best_w[k] = torch.where(sel.view(-1, 1, 1), g.weight, best_w[k])
                    best_b[k] = torch.where(sel.view(-1, 1), g.bias, best_b[k])
                    bad = failed_now[offsets[k]:offsets[k + 1]].to(self.device)
                    if bool(bad.any()):  # keep NaN out of a failed config's head
                        g.weight.masked_fill_(bad.view(-1, 1, 1), 0.0)
                        g.bias.masked_fill_(bad.view(-1, 1), 0.0)
                    if bool(bad.any()):
                        self.optimizer.reset_configs(2 * k, bad)
                        self.optimizer.reset_configs(2 * k + 1, bad)
            if progress is not None:
                done = [r.val_map[r.best_epoch - 1] for r in results if r.best_epoch > 0]
                progress(EpochProgress(epoch, self.epochs, m_total, max(done) if done else float("nan")))
        with torch.no_grad():
            for k, g in enumerate(self.groups):
                scores = torch.sigmoid(torch.matmul(self.data.x_test, best_w[k]) + best_b[k].unsqueeze(1))
                ap = average_precision(scores, self.data.y_test).cpu()
                for j in range(len(g.members)):
                    r = results[offsets[k] + j]
                    if r.best_epoch > 0:
                        r.test_ap = [float(a) for a in ap[j] * 100.0]
                        r.test_map = float(ap[j].mean() * 100.0)
        by_config = {i: results[j] for j, i in enumerate(order)}
        return [by_config[i] for i in range(len(self.configs))]
