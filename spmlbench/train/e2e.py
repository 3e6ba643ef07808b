"""End-to-end fine-tuning on images (mode ``e2e``; LinearInit, mode ``linear-init``, builds on it in
:mod:`spmlbench.train.linear_init`).

One job = one backbone + linear head trained with one loss under a resolved recipe
(:class:`~spmlbench.train.e2e_recipe.E2ERecipe`: the loss's paper recipe with the job's settings on
top, resolved by :func:`spmlbench.experiments.recipes.job_recipes`). Per epoch: ``loss.start_epoch``,
one pass over the training images (protocol transform with flips; SMILE first refreshes its feature
graph), ``loss.end_epoch`` (EM-APL's pseudo-labelling pass over the training
images, eval transform), val mAP, checkpoint. The reported epoch is the best val epoch; its
model is scored on the test split at the end.

Matched seeds: the head init and every epoch's minibatch order come from
:mod:`spmlbench.train.seeding` (the seed only, as in the linear mode); flip decisions from
:func:`spmlbench.train.images.flip_mask` (seed, epoch, row); ROLE's label-matrix init from the
seed; the global RNG (MIME's dropout and samples, SMILE's Beta draws) seeded with the job's seed for the
run, the caller's state restored after. Every loss trained with seed ``s`` sees the same init, batches and
augmentations.

Speed (CUDA): bf16 autocast for the backbone (the head and the loss run in float32), channels-last,
uint8 images pinned and copied ``non_blocking`` (normalised on the device), persistent decode
workers, fused Adam, and no host synchronisation inside the training step (the epoch loss is
accumulated on the device). ``exact=True`` trains in float32 with TF32 off and deterministic
cuDNN (the reference numerics).

Checkpoints in ``workdir``: ``last.pt`` (model, optimizer, loss state incl. ROLE's G / LL-Cp's
matrix / EM-APL's pseudo labels, RNG state, per-epoch metrics) after every epoch and
``best-e<k>.pt`` for the best val epoch, all written atomically. A killed run resumes after its
last completed epoch and ends with the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from spmlbench.atomic import atomic_write_text
from spmlbench.errors import SpmlError
from spmlbench.runtime import backend_flags, default_workers, device_label, resolve_device
from spmlbench.train import checkpoint as ckpt
from spmlbench.train.e2e_data import (
    JobData,
    RowBatchSampler,
    backbone_and_weights,
    build_job_loss,
    eval_loader,
    job_dict,
    job_hparams,
    load_job_data,
)
from spmlbench.train.e2e_model import E2EModel, build_model
from spmlbench.train.e2e_recipe import E2ERecipe
from spmlbench.train.early_stop import stops
from spmlbench.train.hooks import Hooks, TrainContext
from spmlbench.train.images import EpochBatchSampler, ImageDataset
from spmlbench.train.result import TrainResult


# (epoch, steps done, steps in the epoch), after every training step; the CLI may draw it
StepFn = Callable[[int, int, int], None]


@dataclasses.dataclass
class _Run:
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


HEAD_OPTIONS = {"linear": (), "boostlu": ("alpha",), "mime": ("z_dim", "samples", "beta"), "smile": ()}


def model_head(job: Any) -> tuple[str, dict[str, Any]]:
    """The head the job's loss trains (registry ``head``; ``linear`` for most) and its hyperparameters."""
    from spmlbench.losses import LOSSES

    head = LOSSES.get(job.loss).head or "linear"
    hp = job_hparams(job)
    return head, {k: hp[k] for k in HEAD_OPTIONS.get(head, ()) if k in hp}


def _input(run: _Run, x: torch.Tensor) -> torch.Tensor:
    x = x.to(run.device, non_blocking=True)
    return run.spec.prepare(x, channels_last=run.channels_last)


def _train_epoch(run: _Run, epoch: int) -> torch.Tensor:
    """One pass over the training images; returns the mean batch loss as a device scalar."""
    run.model.train()
    run.model.freeze_backbone(epoch <= run.linear_init_epochs)
    run.train_sampler.set_epoch(epoch)
    total = torch.zeros((), dtype=torch.float32, device=run.device)
    steps = 0
    num_steps = len(run.train_sampler)
    for x, rows in run.train_loader:
        rows = rows.to(run.device, non_blocking=True)
        target = run.target_dev.index_select(0, rows)
        if run.feature_loss:
            feats = run.model.features(_input(run, x), run.amp_dtype)
            value = run.loss(run.model.head(feats), target, rows, features=feats)
        else:
            value = run.loss(run.model(_input(run, x), run.amp_dtype), target, rows)
        value = value + run.model.penalty()
        run.optimizer.zero_grad(set_to_none=True)
        value.backward()
        run.optimizer.step()
        total += value.detach().float()
        steps += 1
        if run.progress is not None:
            run.progress(epoch, steps, num_steps)
    return total / max(steps, 1)


@torch.no_grad()
def _predict(run: _Run, rows: np.ndarray, features: bool = False) -> torch.Tensor:
    """Float32 logits (len(rows), C) on the device for global rows (eval transform, every row); with
    ``features``, the head's inputs instead."""
    run.model.eval()
    run.eval_sampler.set_rows(rows)
    fn = run.model.features if features else run.model
    out = [fn(_input(run, x), run.amp_dtype) for x, _ in run.eval_loader]
    if not out:
        return torch.zeros(0, run.data.num_classes, device=run.device)
    return torch.cat(out)


def scores_map(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    """(mAP x100, per-class AP x100) of float32 sigmoid scores (docs/protocol.md, section 6)."""
    from spmlbench.train.evaluate import average_precision

    ap = average_precision(torch.sigmoid(logits.float()), labels.to(logits.device))
    ap100 = (ap * 100.0).cpu()
    return float(ap100.mean()) if ap100.numel() else 0.0, [float(v) for v in ap100]


def _should_stop(recipe: E2ERecipe, val_map: list[float]) -> bool:
    """Early-stop rule after the latest epoch (best val epoch is reported either way)."""
    return stops(recipe.early_stop, val_map)


def _optimizer(model: E2EModel, loss: nn.Module, recipe: E2ERecipe, device: torch.device, exact: bool) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]] = [
        {"params": list(model.backbone.parameters()), "lr": recipe.lr},
        {"params": list(model.head.parameters()), "lr": recipe.lr * recipe.head_lr_mult},
    ]
    if hasattr(loss, "param_groups"):
        groups += list(loss.param_groups(recipe.lr, recipe.lr * recipe.head_lr_mult))
    if recipe.optimizer == "adamax":  # MIME
        return torch.optim.Adamax(groups, lr=recipe.lr)
    fused = device.type == "cuda" and not exact
    return torch.optim.Adam(groups, lr=recipe.lr, fused=fused or None)


def _run_fingerprint(job: Any, recipe: E2ERecipe, extra: Mapping[str, Any]) -> str:
    return ckpt.fingerprint({"job": job_dict(job), "recipe": dataclasses.asdict(recipe), **extra})


def _best_path(workdir: Path, epoch: int) -> Path:
    return workdir / f"best-e{epoch}.pt"


def _prune_best(workdir: Path, keep: int) -> None:
    for p in workdir.glob("best-e*.pt"):
        if p.name != _best_path(workdir, keep).name:
            p.unlink(missing_ok=True)


def train_e2e(
    job: Any,
    *,
    recipe: E2ERecipe,
    home: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    workdir: str | os.PathLike[str],
    exact: bool = False,
    workers: int | None = None,
    progress: StepFn | None = None,
    init_head: Mapping[str, torch.Tensor] | None = None,
    init_loss_state: Mapping[str, torch.Tensor] | None = None,
    image_size: int | None = None,
    weights: str | None = None,
    labels: Any = None,
    hooks: Hooks | None = None,
) -> TrainResult:
    """Fine-tune backbone + head end to end for one job; resumable from ``workdir``.

    ``job``: a JobSpec (dataset, loss, hparams, seed, backbone ``name[:weights]``). ``recipe``: the
    resolved optimisation settings (epochs, batch size, lrs, early stop, eval batch size).
    ``init_head`` / ``init_loss_state``: LinearInit's head and loss state to start from. ``image_size``: default the backbone's (448).
    User errors (missing data, bad settings) raise :class:`SpmlError`; any other failure is
    returned as a failed :class:`TrainResult` (``error``) with the epochs finished so far.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    backbone, weights = backbone_and_weights(job, weights)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    amp = dev.type == "cuda" and not exact
    settings = {
        **dataclasses.asdict(recipe),
        "backbone": backbone,
        "weights": weights,
        "image_size": image_size,
        "exact": bool(exact),
        "amp": "bf16" if amp else "fp32",
        "linear_init": init_head is not None,
    }
    fp = _run_fingerprint(job, recipe, {k: settings[k] for k in ("backbone", "weights", "image_size", "exact", "linear_init")})
    done = workdir / "result.json"
    if done.exists():
        cached = json.loads(done.read_text())
        if cached.get("fingerprint") == fp:
            return TrainResult.from_json(json.dumps(cached["result"]))
    history: dict[str, Any] = {"val_map": [], "train_loss": [], "train_s": [], "best_epoch": 0, "stopped": False,
                               "wall_s": 0.0}
    try:
        with backend_flags(dev, exact), torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(int(getattr(job, "seed", 0) or 0))  # MIME's dropout and draws, SMILE's Beta draws
            result = _train(
                job, home=home, dev=dev, workdir=workdir, exact=exact, workers=workers, progress=progress,
                init_head=init_head, init_loss_state=init_loss_state, recipe=recipe, backbone=backbone,
                weights=weights, image_size=image_size, labels=labels, hooks=hooks or Hooks(),
                fingerprint=fp, history=history, settings=settings,
            )
    except SpmlError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed job becomes a failed record, not a crash of the sweep
        return TrainResult(
            status="failed", val_map=list(history["val_map"]), train_loss=list(history["train_loss"]),
            best_epoch=int(history["best_epoch"]), test_map=math.nan, test_ap=[],
            epochs_run=len(history["val_map"]), device=device_label(dev),
            wall_s=float(history["wall_s"]) + time.perf_counter() - t0,
            error=f"{type(exc).__name__}: {exc}", settings=settings,
        )
    atomic_write_text(done, json.dumps({"fingerprint": fp, "result": json.loads(result.to_json())}))
    return result


def _train(
    job: Any, *, home: Any, dev: torch.device, workdir: Path, exact: bool, workers: int | None,
    progress: StepFn | None,
    init_head: Mapping[str, torch.Tensor] | None, init_loss_state: Mapping[str, torch.Tensor] | None,
    recipe: E2ERecipe, backbone: str, weights: str, image_size: int | None, labels: Any, hooks: Hooks,
    fingerprint: str, history: dict[str, Any], settings: dict[str, Any],
) -> TrainResult:
    seed = int(getattr(job, "seed", 0) or 0)
    data = load_job_data(job, home, labels)
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
    optimizer = _optimizer(model, loss, recipe, dev, exact)
    # a loss with a ``linear_init`` hyperparameter (GR) trains the head alone for that many epochs first
    linear_init_epochs = int(job_hparams(job).get("linear_init", 0) or 0)

    state = ckpt.load_checkpoint(workdir / "last.pt", expect_fingerprint=fingerprint, map_location=dev)
    start = 1
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        loss.load_state_dict(state["loss"])
        ckpt.set_rng_state(state["rng"])
        history.update(copy.deepcopy(state["history"]))
        start = int(state["epoch"]) + 1
        _prune_best(workdir, int(history["best_epoch"]))

    from spmlbench.train.seeding import epoch_orders

    n_train = len(data.train_rows)
    orders = epoch_orders(seed, n_train, recipe.epochs, spec.dim, data.num_classes)
    train_ds = ImageDataset(data.image_root, [data.images[r] for r in data.train_rows], image_size=size,
                            flip_seed=seed, mode=spec.mode)
    eval_ds = ImageDataset(data.image_root, data.images, image_size=size, mode=spec.mode)
    n_workers = default_workers(dev) if workers is None else int(workers)
    train_sampler = EpochBatchSampler(orders, recipe.batch_size)
    eval_sampler = RowBatchSampler(data.val_rows, recipe.eval_batch_size)
    run = _Run(
        job=job, data=data, recipe=recipe, model=model, spec=spec, loss=loss, optimizer=optimizer, device=dev,
        amp_dtype=torch.bfloat16 if settings["amp"] == "bf16" else None, channels_last=channels_last,
        train_loader=eval_loader(train_ds, train_sampler, n_workers, dev), train_sampler=train_sampler,
        eval_loader=eval_loader(eval_ds, eval_sampler, n_workers, dev), eval_sampler=eval_sampler,
        target_dev=data.train_target.to(dev), linear_init_epochs=linear_init_epochs,
        progress=progress or None, feature_loss=feature_loss,
    )
    val_labels = data.val_labels.to(dev)
    ctx = TrainContext(model=model, loss=loss, optimizer=optimizer, history=history, device=dev)
    if hooks.on_start is not None:
        hooks.on_start(ctx)
    epoch = start
    while epoch <= recipe.epochs and not history["stopped"]:
        te = time.perf_counter()
        loss.start_epoch(epoch, recipe.epochs)
        if feature_loss:  # SMILE: the feature bank (filled once) and its k-NN graph, rebuilt every epoch
            loss.batched.build_graph(lambda: _predict(run, data.train_rows, features=True))
        mean_loss = _train_epoch(run, epoch)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)  # epoch boundary: make the train time honest
        history.setdefault("train_s", []).append(time.perf_counter() - te)
        loss.end_epoch(lambda: _predict(run, data.train_rows))
        val_map, _ = scores_map(_predict(run, data.val_rows), val_labels)
        history["train_loss"].append(float(mean_loss))  # the one host sync of the epoch
        history["val_map"].append(val_map)
        improved = history["best_epoch"] == 0 or val_map > history["val_map"][history["best_epoch"] - 1]
        if improved:
            history["best_epoch"] = epoch
            ckpt.save_checkpoint(_best_path(workdir, epoch), {
                "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(), "loss": loss.state_dict(),
            })
        history["stopped"] = epoch == recipe.epochs or _should_stop(recipe, history["val_map"])
        history["wall_s"] = float(history["wall_s"]) + time.perf_counter() - te
        ckpt.save_checkpoint(workdir / "last.pt", {
            "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "loss": loss.state_dict(), "rng": ckpt.rng_state(),
            "history": copy.deepcopy(history),
        })
        _prune_best(workdir, int(history["best_epoch"]))
        if hooks.on_epoch_end is not None:
            hooks.on_epoch_end(epoch, ctx)
        epoch += 1

    tt = time.perf_counter()
    best = ckpt.load_checkpoint(_best_path(workdir, int(history["best_epoch"])),
                                expect_fingerprint=fingerprint, map_location=dev)
    if best is None:
        raise RuntimeError(f"{workdir}: best-epoch checkpoint missing; delete the folder and re-run")
    model.load_state_dict(best["model"])
    test_map, test_ap = scores_map(_predict(run, data.test_rows), data.test_labels.to(dev))
    history["wall_s"] = float(history["wall_s"]) + time.perf_counter() - tt
    return TrainResult(
        val_map=[float(v) for v in history["val_map"]], train_loss=[float(v) for v in history["train_loss"]],
        best_epoch=int(history["best_epoch"]), test_map=test_map, test_ap=test_ap,
        epochs_run=len(history["val_map"]), device=device_label(dev), wall_s=float(history["wall_s"]),
        settings=settings, train_s=[float(v) for v in history["train_s"]],
    )
