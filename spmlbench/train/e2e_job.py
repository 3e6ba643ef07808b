"""One end-to-end job's training state and steps: its model, loss, optimiser and loaders (:func:`setup_job`),
an epoch's start and training steps, and the job's part in the epoch engine (:mod:`spmlbench.train.engine`:
:func:`job_member`, the val mAP :func:`evaluate_job`, the best checkpoint :func:`keep_best_job`, ``last.pt`` and
the hooks :func:`end_epoch`, the test AP at the best epoch :func:`test_job`). :mod:`spmlbench.train.e2e` runs
one job's epochs with them; :mod:`spmlbench.train.lockstep` runs several jobs that share their batch order on
one decoded batch stream.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from spmlbench.runtime import default_workers, device_label
from spmlbench.train import checkpoint as ckpt
from spmlbench.train.e2e_data import (
    JobData,
    RowBatchSampler,
    build_job_loss,
    eval_loader,
    job_hparams,
    load_job_data,
)
from spmlbench.train.e2e_model import E2EModel, build_model
from spmlbench.train.e2e_recipe import E2ERecipe
from spmlbench.train.engine import Member
from spmlbench.train.hooks import Hooks, TrainContext
from spmlbench.train.images import EpochBatchSampler, ImageDataset
from spmlbench.train.result import TrainResult


# (epoch, steps done, steps in the epoch), after every training step; the CLI may draw it
StepFn = Callable[[int, int, int], None]


@dataclasses.dataclass
class Run:
    """Everything one training call works with."""

    job: Any
    data: JobData
    recipe: E2ERecipe
    model: E2EModel
    spec: Any
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool
    train_loader: DataLoader
    train_sampler: EpochBatchSampler
    eval_loader: DataLoader
    eval_sampler: RowBatchSampler
    target_dev: torch.Tensor
    linear_init_epochs: int
    progress: StepFn | None
    feature_loss: bool = False  # the loss reads the batch's pooled features (SMILE)


def model_head(job: Any) -> tuple[str, Any]:
    """The head the job's method trains (:func:`spmlbench.heads.method_of`; ``linear`` for a plain loss) and the
    job's hyperparameters, which hold the head's options."""
    from spmlbench.heads import method_of
    from spmlbench.losses import resolve_hparams

    hp = resolve_hparams(job.loss, getattr(job, "dataset", None), **job_hparams(job))
    return method_of(job.loss).head.name, hp


def prepare_input(run: Run, x: torch.Tensor) -> torch.Tensor:
    """A loader's uint8 batch on the run's device, normalised as its backbone expects (channels-last on CUDA)."""
    x = x.to(run.device, non_blocking=True)
    return run.spec.prepare(x, channels_last=run.channels_last)


def begin_epoch(run: Run, epoch: int) -> None:
    """Before an epoch's training steps: the model in train mode, the backbone frozen during a linear-init phase."""
    run.model.train()
    run.model.freeze_backbone(epoch <= run.linear_init_epochs)


def train_step(run: Run, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """One training step on a batch already on the device and prepared (``x``) with its train rows; the
    step's loss value (detached, on the device)."""
    target = run.target_dev.index_select(0, rows)
    if run.feature_loss:
        feats = run.model.features(x, run.amp_dtype)
        value = run.loss(run.model.head(feats), target, rows, features=feats)
    else:
        value = run.loss(run.model(x, run.amp_dtype), target, rows)
    value = value + run.model.penalty()
    run.optimizer.zero_grad(set_to_none=True)
    value.backward()
    run.optimizer.step()
    return value.detach().float()


def train_epoch(run: Run, epoch: int) -> torch.Tensor:
    """One pass over the training images; returns the mean batch loss as a device scalar."""
    begin_epoch(run, epoch)
    run.train_sampler.set_epoch(epoch)
    total = torch.zeros((), dtype=torch.float32, device=run.device)
    steps = 0
    num_steps = len(run.train_sampler)
    for x, rows in run.train_loader:
        total += train_step(run, prepare_input(run, x), rows.to(run.device, non_blocking=True))
        steps += 1
        if run.progress is not None:
            run.progress(epoch, steps, num_steps)
    return total / max(steps, 1)


@torch.no_grad()
def predict(run: Run, rows: np.ndarray, features: bool = False, train_mode: bool = False) -> torch.Tensor:
    """Float32 logits (len(rows), C) on the device for global rows (eval transform, every row); with
    ``features``, the head's inputs instead; ``train_mode``: the model in train mode (dropout on)."""
    run.model.train(train_mode)
    run.eval_sampler.set_rows(rows)
    fn = run.model.features if features else run.model
    out = [fn(prepare_input(run, x), run.amp_dtype) for x, _ in run.eval_loader]
    if not out:
        return torch.zeros(0, run.data.num_classes, device=run.device)
    return torch.cat(out)


def scores_map(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    """(mAP x100, per-class AP x100) of float32 sigmoid scores (docs/protocol.md, section 6)."""
    from spmlbench.train.evaluate import average_precision

    ap = average_precision(torch.sigmoid(logits.float()), labels.to(logits.device))
    ap100 = (ap * 100.0).cpu()
    return float(ap100.mean()) if ap100.numel() else 0.0, [float(v) for v in ap100]


def fused_kernels(recipe: E2ERecipe, exact: bool) -> bool:
    """Whether a job's optimiser runs torch's fused Adam / SGD kernels (one pass over each tensor), on every device
    and whether the job trains alone or in lockstep: unless ``exact`` (torch's default kernels, the numbers of
    earlier versions; on the CPU a loop over the tensors, several ops each); Adamax (MIME) has none."""
    return not exact and recipe.optimizer in ("adam", "sgd")


def build_optimizer(model: E2EModel, loss: nn.Module, recipe: E2ERecipe, device: torch.device,
                    exact: bool) -> torch.optim.Optimizer:
    """The job's optimiser over the backbone (``lr``), the head (``lr x head_lr_mult``) and the loss's own groups,
    with the kernels of :func:`fused_kernels`."""
    fused = fused_kernels(recipe, exact)
    groups: list[dict[str, Any]] = [
        {"params": list(model.backbone.parameters()), "lr": recipe.lr},
        {"params": list(model.head.parameters()), "lr": recipe.lr * recipe.head_lr_mult},
    ]
    if hasattr(loss, "param_groups"):
        groups += list(loss.param_groups(recipe.lr, recipe.lr * recipe.head_lr_mult))
    if recipe.optimizer == "adamax":  # MIME
        return torch.optim.Adamax(groups, lr=recipe.lr)
    if recipe.optimizer == "sgd":  # Large Loss Matters on VOC
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                               fused=fused or None)
    return torch.optim.Adam(groups, lr=recipe.lr, fused=fused or None)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """A checkpoint's optimiser state into ``optimizer``, which keeps its own kernels (torch's
    ``load_state_dict`` would take the ``fused`` / ``foreach`` flags of the run that saved it)."""
    impl = [(g.get("fused"), g.get("foreach")) for g in optimizer.param_groups]
    optimizer.load_state_dict(dict(state))
    for g, (fused, foreach) in zip(optimizer.param_groups, impl):
        g["fused"], g["foreach"] = fused, foreach


def best_path(workdir: Path, epoch: int) -> Path:
    """The checkpoint of the best val epoch ``epoch`` in a job's work folder."""
    return workdir / f"best-e{epoch}.pt"


def prune_best(workdir: Path, keep: int) -> None:
    """Delete every best-epoch checkpoint of ``workdir`` but epoch ``keep``'s."""
    for p in workdir.glob("best-e*.pt"):
        if p.name != best_path(workdir, keep).name:
            p.unlink(missing_ok=True)


@dataclasses.dataclass
class JobState:
    """One job's training state between epochs (the single-job loop and the lockstep loop share it)."""

    run: Run
    history: dict[str, Any]  # a resumed job starts after its epochs here (the engine's Member.resumed)
    workdir: Path
    fingerprint: str
    settings: dict[str, Any]
    hooks: Hooks
    ctx: TrainContext
    val_labels: torch.Tensor
    epoch_s: float = 0.0  # seconds of the current epoch's work so far (its training pass, then its end)


def setup_job(
    job: Any, *, home: Any, dev: torch.device, workdir: Path, exact: bool, workers: int | None,
    progress: StepFn | None,
    init_head: Mapping[str, torch.Tensor] | None, init_loss_state: Mapping[str, torch.Tensor] | None,
    recipe: E2ERecipe, backbone: str, weights: str, image_size: int | None, labels: Any, hooks: Hooks,
    fingerprint: str, history: dict[str, Any], settings: dict[str, Any], data: JobData | None = None,
) -> JobState:
    """Build one job's model, loss, optimiser and loaders, resumed from ``workdir/last.pt`` when it holds this
    run; ``data``: the job's inputs when already loaded (lockstep: one load for every job)."""
    seed = int(getattr(job, "seed", 0) or 0)
    data = data if data is not None else load_job_data(job, home, labels)
    head = model_head(job)
    settings["head"] = head[0]
    model, spec = build_model(backbone, weights, data.num_classes, seed, *head)
    size = int(image_size or spec.image_size)
    settings["image_size"] = size
    if init_head is not None:
        model.head.load_state_dict(dict(init_head))
    loss = build_job_loss(job, data, seed)
    feature_loss = bool(getattr(getattr(loss, "batched", None), "needs_features", False))
    if feature_loss:
        loss.batched.attach_model(spec.dim, seed)  # SMILE's label-enhancement model on the pooled features
    if init_loss_state is not None:
        loss.load_state_dict(dict(init_loss_state))
    channels_last = dev.type == "cuda"
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss.to(dev)
    optimizer = build_optimizer(model, loss, recipe, dev, exact)
    # a loss with a ``linear_init`` hyperparameter (GR) trains the head alone for that many epochs first
    linear_init_epochs = int(job_hparams(job).get("linear_init", 0) or 0)

    state = ckpt.load_checkpoint(workdir / "last.pt", expect_fingerprint=fingerprint, map_location=dev)
    if state is not None:
        model.load_state_dict(state["model"])
        load_optimizer_state(optimizer, state["optimizer"])
        loss.load_state_dict(state["loss"])
        ckpt.set_rng_state(state["rng"])
        history.update(copy.deepcopy(state["history"]))
        prune_best(workdir, int(history["best_epoch"]))

    train_loader, train_sampler = train_input(data, spec, seed, recipe, size, dev, workers)
    eval_ds = ImageDataset(data.image_root, data.images, image_size=size, mode=spec.mode)
    eval_sampler = RowBatchSampler(data.val_rows, recipe.eval_batch_size)
    run = Run(
        job=job, data=data, recipe=recipe, model=model, spec=spec, loss=loss, optimizer=optimizer, device=dev,
        amp_dtype=torch.bfloat16 if settings["amp"] == "bf16" else None, channels_last=channels_last,
        train_loader=train_loader, train_sampler=train_sampler,
        eval_loader=eval_loader(eval_ds, eval_sampler, default_workers(dev, workers), dev), eval_sampler=eval_sampler,
        target_dev=data.train_target.to(dev), linear_init_epochs=linear_init_epochs,
        progress=progress or None, feature_loss=feature_loss,
    )
    ctx = TrainContext(model=model, loss=loss, optimizer=optimizer, history=history, device=dev)
    if hooks.on_start is not None:
        hooks.on_start(ctx)
    return JobState(run, history, workdir, fingerprint, settings, hooks, ctx, data.val_labels.to(dev))


def train_input(data: JobData, spec: Any, seed: int, recipe: E2ERecipe, image_size: int, dev: torch.device,
                workers: int | None) -> tuple[DataLoader, EpochBatchSampler]:
    """A job's training batches: the loader (decode, resize, the seed's flips; uint8, pinned for CUDA) over the
    seed's epoch orders, and its sampler (``set_epoch`` picks the epoch)."""
    from spmlbench.train.seeding import epoch_orders

    orders = epoch_orders(seed, len(data.train_rows), recipe.epochs, spec.dim, data.num_classes)
    train_ds = ImageDataset(data.image_root, [data.images[r] for r in data.train_rows], image_size=image_size,
                            flip_seed=seed, mode=spec.mode)
    sampler = EpochBatchSampler(orders, recipe.batch_size)
    return eval_loader(train_ds, sampler, default_workers(dev, workers), dev), sampler


def start_epoch(st: JobState, epoch: int) -> None:
    """The loss's epoch schedule, and SMILE's feature graph (its bank filled once, the k-NN graph every epoch)."""
    run = st.run
    run.loss.start_epoch(epoch, run.recipe.epochs)
    if run.feature_loss:
        run.loss.batched.build_graph(lambda: predict(run, run.data.train_rows, features=True))


def job_member(st: JobState) -> Member:
    """The job as a member of :func:`spmlbench.train.engine.fit`: its epochs and stop rule, after the epochs its
    ``last.pt`` holds (resume)."""
    recipe = st.run.recipe
    return Member.resumed(recipe.epochs, recipe.early_stop, st.history["val_map"], st.history["train_loss"])


def end_training_pass(st: JobState) -> None:
    """After an epoch's steps (``st.epoch_s``: their seconds): the seconds into the history, EM-APL's pass."""
    run, t0 = st.run, time.perf_counter()
    st.history.setdefault("train_s", []).append(st.epoch_s)
    run.loss.end_epoch(lambda: predict(run, run.data.train_rows, train_mode=run.loss.predict_in_train_mode()))
    st.epoch_s += time.perf_counter() - t0


def evaluate_job(st: JobState, epoch: int) -> float:
    """After an epoch's steps: :func:`end_training_pass`, then the job's val mAP."""
    end_training_pass(st)
    run, t0 = st.run, time.perf_counter()
    val_map, _ = scores_map(predict(run, run.data.val_rows), st.val_labels)
    st.epoch_s += time.perf_counter() - t0
    return val_map


def _record(st: JobState, result: TrainResult) -> None:
    """The engine's record of the job's epochs, into the history its checkpoints carry."""
    history = st.history
    history["train_loss"].extend(result.train_loss[len(history["train_loss"]):])
    history["val_map"].extend(result.val_map[len(history["val_map"]):])
    history["best_epoch"] = result.best_epoch


def keep_best_job(st: JobState, epoch: int, result: TrainResult) -> None:
    """The job improved in ``epoch``: its model and loss state as ``best-e<epoch>.pt``."""
    t0 = time.perf_counter()
    _record(st, result)
    ckpt.save_checkpoint(best_path(st.workdir, epoch), {
        "fingerprint": st.fingerprint, "epoch": epoch, "model": st.run.model.state_dict(),
        "loss": st.run.loss.state_dict(),
    })
    st.epoch_s += time.perf_counter() - t0


def end_epoch(st: JobState, epoch: int, member: Member) -> None:
    """After a recorded epoch: whether the job is done, ``last.pt`` (the state to resume from), the pruned best
    checkpoints and the ``on_epoch_end`` hook."""
    run, history = st.run, st.history
    t0 = time.perf_counter()
    _record(st, member.result)
    history["stopped"] = epoch == run.recipe.epochs or member.stopped
    history["wall_s"] = float(history["wall_s"]) + st.epoch_s + time.perf_counter() - t0
    ckpt.save_checkpoint(st.workdir / "last.pt", {
        "fingerprint": st.fingerprint, "epoch": epoch, "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(), "loss": run.loss.state_dict(), "rng": ckpt.rng_state(),
        "history": copy.deepcopy(history),
    })
    prune_best(st.workdir, int(history["best_epoch"]))
    if st.hooks.on_epoch_end is not None:
        st.hooks.on_epoch_end(epoch, st.ctx)


def load_best(st: JobState) -> None:
    """The model of the best val epoch (its ``best-e<k>.pt``) back into the job's model."""
    best = ckpt.load_checkpoint(best_path(st.workdir, int(st.history["best_epoch"])),
                                expect_fingerprint=st.fingerprint, map_location=st.run.device)
    if best is None:
        raise RuntimeError(f"{st.workdir}: best-epoch checkpoint missing; delete the folder and re-run")
    st.run.model.load_state_dict(best["model"])


def test_job(st: JobState) -> tuple[float, list[float]]:
    """Test (mAP, per-class AP) x100 at the best val epoch (its checkpoint reloaded)."""
    run, history = st.run, st.history
    tt = time.perf_counter()
    load_best(st)
    test = scores_map(predict(run, run.data.test_rows), run.data.test_labels.to(run.device))
    history["wall_s"] = float(history["wall_s"]) + time.perf_counter() - tt
    return test


def job_result(st: JobState, result: TrainResult) -> TrainResult:
    """The engine's result of a finished job with its device, seconds and settings."""
    return dataclasses.replace(result, device=device_label(st.run.device), wall_s=float(st.history["wall_s"]),
                               settings=st.settings, train_s=[float(v) for v in st.history["train_s"]])
