"""Linear probes on cached features: many configs (losses x seeds x grid points) trained at once.

The head of config ``m`` is ``W[m] (D, C)``, ``b[m] (C,)``, all configs of a cohort stacked
(configs ordered by loss, then seed; stored by seed). Configs that share a seed share their minibatches (matched
seeds, :mod:`spmlbench.train.seeding`). One step, for every config at once:

1. one gather of each seed's batch rows ``(S, B, D)``; the heads (:mod:`spmlbench.train.heads`) are
   stored grouped by seed, so each seed's batch serves all its configs as a stride-0 view: one
   ``baddbmm`` per seed for the logits ``(M, B, C)`` (plain tensors: autograd never sees the
   head's big tensors); the label masks are bool, gathered the same way;
2. one call of each loss's batched form on its own slice of the logits with per-config
   ``observed (M_l, B, C)`` / ``index (M_l, B)`` (all seeds of that loss together): losses with a
   fused gradient return values and logit gradients from ``value_and_grad`` (no autograd graph);
   the others run forward on a slice made an autograd leaf, with one backward for all of them
   (down to those slices and ROLE's label logits); configs are independent, so each gets exactly
   its own gradient;
3. the head gradient by hand: ``dW = X^T dlogits`` (one ``bmm`` per seed), ``db = sum_b dlogits``;
4. one Adam step over all configs (torch's fused kernel on the big tensors, per-config lr).

Nothing in an epoch reads a value back to the host: every step writes each config's loss value
and the float64 sum of its logits (non-finite exactly when a logit is) into per-epoch device
tensors, from which the mean loss and the first non-finite step (and whether logits or the loss)
are computed once per epoch. The epochs, early stopping, best epochs and the test at the best epoch are
the engine's (:func:`spmlbench.train.engine.fit`, the cohort's configs its members): each epoch trains every
config, val mAP (one matmul, vectorised AP) is computed for every config, and the improved configs' heads are
kept with one ``torch.where``; a stopped config keeps training in the batch, its results frozen (equivalent
to stopping it). Non-finite loss or logits mark that config failed (epoch, step, which), its head zeroed,
and the others continue.
``train_linear(threads=n)`` runs the training with ``n`` intra-op threads (scoped, restored), on a CPU with
denormal floats flushed to zero (:func:`spmlbench.runtime.flush_denormals`: Adam's decaying moments);
``spmlbench.train.parallel.train_linear_parallel(processes=n)`` splits the configs over n CPU processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from spmlbench.runtime import flush_denormals, intra_op_threads
from spmlbench.train.configs import (
    LinearData,
    ProgressFn,
    TrainConfig,
    ValHook,
    attach_pseudo,
    check_config,
    uses_clean_labels,
)
from spmlbench.train.early_stop import EarlyStop  # noqa: F401 - re-exported: the rule the cohort's configs follow
from spmlbench.train.engine import Failure, Member, fit
from spmlbench.train.evaluate import average_precision, mean_ap
from spmlbench.train.heads import StackedHeads
from spmlbench.train.optim import BatchedAdam
from spmlbench.train.result import TrainResult
from spmlbench.train.seeding import epoch_orders, head_init, num_steps


def train_linear(
    data: LinearData,
    configs: Sequence[TrainConfig],
    *,
    device: str | torch.device = "cpu",
    progress: ProgressFn | None = None,
    on_val: ValHook | None = None,
    threads: int | None = None,
    keep_best: bool = False,
) -> list[TrainResult]:
    """Train every config (batched, in this process); returns one :class:`TrainResult` per config, in order.

    Configs are run in cohorts of equal ``(batch_size, epochs)``; within a cohort configs of the
    same seed share every minibatch. ``on_val`` (optional) sees every epoch's val scores (prediction
    dumps); it is called for every config every epoch, also after a config stopped early.
    ``threads``: intra-op CPU threads while training (None: leave torch's setting; the previous
    count is restored afterwards). On an idle 2-core machine the default (2) is faster; on a
    machine whose cores are busy with other work, 1 avoids multi-threaded kernels stalling.
    ``keep_best``: each result's ``best_state`` holds its best epoch's head (CPU tensors) and, for a
    config alone in its loss call, that loss's state then (ROLE's label matrix: LinearInit hands both over).
    Over several CPU processes: :func:`spmlbench.train.parallel.train_linear_parallel`.
    """
    for c in configs:
        check_config(c)
    results: list[TrainResult | None] = [None] * len(configs)
    cohorts: dict[tuple[int, int], list[int]] = {}
    for i, c in enumerate(configs):
        cohorts.setdefault((c.batch_size, c.epochs), []).append(i)
    dev = torch.device(device)
    with intra_op_threads(threads), flush_denormals(dev):
        on_dev = data.to(dev)
        for members in cohorts.values():
            hook = None if on_val is None else (
                lambda e, idx, p, members=members: on_val(e, [members[i] for i in idx], p))
            out = _Cohort(on_dev, [configs[i] for i in members], dev, keep_best).run(progress, hook)
            for i, r in zip(members, out):
                results[i] = r
    return [r for r in results if r is not None]


@dataclasses.dataclass
class _LossCall:
    """One batched loss over the cohort's configs ``lo:hi`` (one loss, any seeds)."""

    loss: Any
    lo: int
    hi: int
    clean: bool  # observed = the clean labels (bce)


def call_key(c: TrainConfig) -> tuple[str, Any]:
    """Configs that can share one batched loss module: same loss and, for a loss with learnable state
    (ROLE's label matrix), the same ``lr_mult``."""
    return c.loss, c.hparams_dict().get("lr_mult")  # a loss's own parameters train at lr_mult x lr


class _Cohort:
    """Configs with equal batch size and epochs, trained step by step together."""

    def __init__(self, data: LinearData, configs: list[TrainConfig], device: torch.device,
                 keep_best: bool = False) -> None:
        from spmlbench.losses import build_batched_loss

        self.data, self.configs, self.device, self.keep_best = data, configs, device, keep_best
        self.epochs = configs[0].epochs
        self.batch_size = configs[0].batch_size
        n, d, c = data.x_train.shape[0], data.dim, data.num_classes
        # cohort position -> config: by loss call (contiguous slices), then seed, then input order
        self.order = sorted(range(len(configs)), key=lambda i: (call_key(configs[i]), configs[i].seed, i))
        cfgs = [configs[i] for i in self.order]
        self.seeds = sorted({cfg.seed for cfg in cfgs})
        seed_pos = {s: k for k, s in enumerate(self.seeds)}
        seed_of = [seed_pos[cfg.seed] for cfg in cfgs]
        self.seed_of = torch.tensor(seed_of, device=device)  # (M,) seed slot
        inits = {s: head_init(s, d, c) for s in self.seeds}
        self.heads = StackedHeads(torch.stack([inits[cfg.seed][0].t() for cfg in cfgs]).to(device),  # (M, D, C)
                                  torch.stack([inits[cfg.seed][1] for cfg in cfgs]).to(device), seed_of)
        self.calls: list[_LossCall] = []
        params: list[Tensor] = []  # loss parameters (ROLE's label logits)
        lrs: list[list[float]] = []
        lo = 0
        while lo < len(cfgs):
            hi = lo
            while hi < len(cfgs) and call_key(cfgs[hi]) == call_key(cfgs[lo]):
                hi += 1
            name = cfgs[lo].loss
            loss = build_batched_loss(name, [x.hparams_dict() for x in cfgs[lo:hi]], num_classes=c, num_train=n,
                                      dataset=data.dataset).to(device)
            clean = uses_clean_labels(name)
            loss.init_state(data.y_train if clean else data.s_train, [x.seed for x in cfgs[lo:hi]])
            attach_pseudo(loss, data.pseudo)
            for group in loss.param_groups(1.0):
                for p in group["params"]:
                    params.append(p)
                    lrs.append([x.lr * float(group["lr"]) for x in cfgs[lo:hi]])
            self.calls.append(_LossCall(loss, lo, hi, clean))
            lo = hi
        self.val_labels = torch.stack([data.y_val if x.val == "clean" else data.s_val for x in cfgs])
        self.orders = [torch.stack(o).to(device) for o in  # per epoch: (S, N) row order of each seed
                       zip(*(epoch_orders(s, n, self.epochs, d, c) for s in self.seeds))]
        self.loss_params = params
        # parameters 0 / 1 of the optimizer are the stacked head weight / bias
        head_lrs = self.heads.storage_values([x.lr for x in cfgs])
        self.optimizer = BatchedAdam([self.heads.weight, self.heads.bias, *params], [head_lrs, head_lrs, *lrs])
        self.any_clean = any(call.clean for call in self.calls)
        self.s_mask = data.s_train > 0.5  # bool label masks, gathered per step (no per-loss conversion)
        self.y_mask = data.y_train > 0.5

    # -- one epoch ---------------------------------------------------------------------------
    def _train_epoch(self, epoch: int, max_steps: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Train one epoch (its first ``max_steps`` steps: the cost model times a few); returns per-config
        (mean loss, first bad step or -1, bad kind 1 logits / 2 loss)."""
        x_train = self.data.x_train
        n = x_train.shape[0]
        bsz = self.batch_size
        steps = num_steps(n, bsz) if max_steps is None else min(num_steps(n, bsz), max_steps)
        m_total = self.heads.num_configs
        heads = self.heads
        # per step, written in place and checked once at the end of the epoch (no host sync, few ops):
        # each config's loss value and the float64 sum of its logits (non-finite iff a logit is)
        values_hist = torch.empty(steps, m_total, device=self.device)
        logit_hist = torch.empty(steps, m_total, device=self.device, dtype=torch.float64)
        calls = self.calls
        sizes = [call.hi - call.lo for call in calls]  # calls cover the configs in order
        ones = [torch.ones(size, device=self.device) for size in sizes]  # autograd fallback only
        fused = [bool(call.loss.fused_grad) for call in calls]
        for call in calls:
            call.loss.start_epoch(epoch, self.epochs)
        order = self.orders[epoch - 1]  # (S, N): each seed's row order
        seed_of = self.seed_of
        params = self.loss_params

        def per_config(mask: Tensor, rows: Tensor, shape: torch.Size) -> Tensor:
            """Label-mask rows of each seed's batch ``(S, B, C)``, repeated for its configs ``(M, B, C)``."""
            return mask.index_select(0, rows).view(*shape, -1).index_select(0, seed_of)

        for t in range(steps):
            idx_s = order[:, t * bsz:(t + 1) * bsz]  # (S, B): one minibatch per seed
            flat = idx_s.reshape(-1)
            idx = idx_s.index_select(0, seed_of)  # (M, B): config m's rows
            xs = x_train.index_select(0, flat).view(*idx_s.shape, -1)  # (S, B, D): each seed's batch, once
            sb = per_config(self.s_mask, flat, idx_s.shape)
            logits = heads.logits(xs)
            torch.sum(logits, dim=(1, 2), dtype=torch.float64, out=logit_hist[t])
            for p in params:
                p.grad = None
            # fused losses hand over values and logit gradients directly (no autograd graph); the
            # others get their own slice of the logits as an autograd leaf (autograd stops there, the
            # head gradient is taken by hand, no slice gradient is scattered into full-size zeros)
            values: list[Tensor] = []
            grads: list[Tensor | None] = []
            leaves: list[tuple[int, Tensor]] = []
            s_parts = sb.split(sizes)
            y_parts = per_config(self.y_mask, flat, idx_s.shape).split(sizes) if self.any_clean else s_parts
            for k, (call, z, i_k) in enumerate(zip(calls, logits.split(sizes), idx.split(sizes))):
                obs = y_parts[k] if call.clean else s_parts[k]
                if fused[k]:
                    v, g = call.loss.value_and_grad(z, obs, i_k)
                else:
                    z.requires_grad_(True)
                    v, g = call.loss(z, obs, i_k), None
                    leaves.append((k, z))
                values.append(v)
                grads.append(g)
            if leaves:
                torch.autograd.backward([values[k] for k, _ in leaves], [ones[k] for k, _ in leaves])
                for k, z in leaves:
                    grads[k] = z.grad if z.grad is not None else torch.zeros_like(z)
            self.optimizer.step(list(heads.grads(xs, torch.cat(grads))))  # type: ignore[arg-type]
            with torch.no_grad():
                torch.cat(values, out=values_hist[t])
        return _epoch_summary(values_hist, logit_hist)

    def run(self, progress: ProgressFn | None, on_val: ValHook | None = None) -> list[TrainResult]:
        """Train the cohort; return results in the cohort's config order.

        When every loss has a fused gradient nothing needs autograd, so the whole run is in
        ``torch.inference_mode`` (less dispatch work per op: the steps are made of many tiny ops).
        The cohort's tensors are private to it and dropped afterwards; ``on_val`` gets inference
        tensors (read them, or clone them to keep).
        """
        with torch.inference_mode(all(call.loss.fused_grad for call in self.calls)):
            return self._run(progress, on_val)

    def _run(self, progress: ProgressFn | None, on_val: ValHook | None) -> list[TrainResult]:
        members = [Member(self.epochs, self.configs[i].early_stop) for i in self.order]  # in cohort positions
        self.best_w = self.heads.weight.clone()  # storage order
        self.best_b = self.heads.bias.clone()
        self.best_loss: dict[int, dict[str, Tensor] | None] = {}  # keep_best: cohort position -> its loss's state
        results = fit(members, step=self._step, evaluate=lambda e, idx: self._evaluate(e, idx, on_val),
                      keep_best=self._keep_best, test=self._test, progress=progress)
        if self.keep_best:
            for j, r in enumerate(results):
                if r.best_epoch > 0:
                    k = int(self.heads.storage_of[j])
                    head = {"weight": self.best_w[k].t().cpu().clone(), "bias": self.best_b[k].cpu().clone()}
                    r.best_state = {"head": head, "loss": self.best_loss.get(j)}
        by_config = {i: results[j] for j, i in enumerate(self.order)}
        return [by_config[i] for i in range(len(self.configs))]

    # -- the engine's callbacks (cohort positions) ---------------------------------------------
    def _step(self, epoch: int, active: list[int]) -> list[float]:
        """Train every config one epoch (a stopped one too: results are frozen, not the batch); the active
        configs' mean losses. Non-finite values are reported by :meth:`_evaluate`, at the epoch's end."""
        mean_loss, first_bad, bad_kind = self._train_epoch(epoch)
        self.bad = first_bad, bad_kind
        losses = mean_loss.cpu().tolist()
        return [losses[j] for j in active]

    def _evaluate(self, epoch: int, trained: list[int], on_val: ValHook | None) -> list[float | Failure]:
        """The losses' epoch end, val mAP of every config (``on_val`` sees them all); a config with a non-finite
        loss or logits this epoch fails, its head zeroed and its optimizer state reset (no NaN kept)."""
        for call in self.calls:
            call.loss.end_epoch(lambda call=call: self.heads.predict(self.data.x_train, call.lo, call.hi))
        with torch.no_grad():
            probs = torch.sigmoid(self.heads.predict(self.data.x_val))
            val = mean_ap(probs, self.val_labels).cpu().tolist()
            if on_val is not None:
                on_val(epoch, list(self.order), probs)
        first_bad, kinds = (t.cpu().tolist() for t in self.bad)
        out: list[float | Failure] = []
        failed = torch.zeros(len(self.order), dtype=torch.bool)
        for j in trained:
            if first_bad[j] >= 0:
                which = "logits" if kinds[j] == 1 else "loss"
                out.append(Failure(f"non-finite {which} in epoch {epoch} at step {first_bad[j]}"))
                failed[j] = True
            else:
                out.append(float(val[j]))
        if bool(failed.any()):
            with torch.no_grad():
                bad = self.heads.to_storage(failed.to(self.device))
                self.heads.weight.masked_fill_(bad.view(-1, 1, 1), 0.0)
                self.heads.bias.masked_fill_(bad.view(-1, 1), 0.0)
                self.optimizer.reset_configs(0, bad)
                self.optimizer.reset_configs(1, bad)
        return out

    def _keep_best(self, epoch: int, improved: list[int]) -> None:
        """The improved configs' heads (and, with ``keep_best``, their loss state) become their best."""
        if self.keep_best:
            for j in improved:
                self.best_loss[j] = self._loss_state(j)
        mask = torch.zeros(len(self.order), dtype=torch.bool)
        mask[improved] = True
        with torch.no_grad():
            sel = self.heads.to_storage(mask.to(self.device))
            self.best_w = torch.where(sel.view(-1, 1, 1), self.heads.weight, self.best_w)
            self.best_b = torch.where(sel.view(-1, 1), self.heads.bias, self.best_b)

    def _test(self, members: list[int]) -> list[tuple[float, list[float]]]:
        """Test AP (x100) of the given configs' best heads (every config scored at once)."""
        with torch.no_grad():
            scores = torch.sigmoid(self.heads.predict(self.data.x_test, weight=self.best_w, bias=self.best_b))
            ap = average_precision(scores, self.data.y_test).cpu()
        return [(float(ap[j].mean() * 100.0), [float(a) for a in ap[j] * 100.0]) for j in members]

    def _loss_state(self, j: int) -> dict[str, Tensor] | None:
        """A CPU copy of the state of cohort position ``j``'s loss when ``j`` is alone in its call, else None."""
        call = next(c for c in self.calls if c.lo <= j < c.hi)
        if call.hi - call.lo != 1:
            return None
        return {k: v.detach().to("cpu", copy=True) for k, v in call.loss.state_dict().items()}


def _epoch_summary(values: Tensor, logit_sums: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """From per-step ``(steps, M)`` loss values and logit sums: per config the mean loss, the first
    non-finite step (1-based, -1 if none) and what was non-finite there (1 logits, 2 loss, 0 none)."""
    kind = torch.where(~torch.isfinite(logit_sums), 1, torch.where(torch.isfinite(values), 0, 2))  # (steps, M)
    bad = kind > 0
    first = bad.to(torch.int8).argmax(dim=0)  # first True per column (0 when none)
    any_bad = bad.any(dim=0)
    first_bad = torch.where(any_bad, first + 1, -1)
    bad_kind = torch.where(any_bad, kind.gather(0, first.unsqueeze(0)).squeeze(0), 0)
    return values.double().sum(dim=0) / values.shape[0], first_bad, bad_kind
