"""Cole et al.'s LinearInit (mode ``linear-init``): a linear phase on the backbone's features, then
end-to-end fine-tuning from that head (ROLE's label matrix carries over)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spmlbench.errors import ConfigError
from spmlbench.runtime import backend_flags, default_workers, resolve_device
from spmlbench.train import checkpoint as ckpt
from spmlbench.train.e2e import StepFn, scores_map, train_e2e
from spmlbench.train.e2e_data import (
    JobData,
    RowBatchSampler,
    backbone_and_weights,
    build_job_loss,
    eval_loader,
    job_dict,
    load_job_data,
)
from spmlbench.train.e2e_result import E2EResult, Hooks
from spmlbench.train.images import ImageDataset
from spmlbench.train.recipes_e2e import LinearPhaseRecipe, linear_init_recipe


@dataclasses.dataclass
class LinearPhase:
    """Outcome of LinearInit's linear phase: the best val epoch's head and loss state."""

    head: dict[str, torch.Tensor]
    loss_state: dict[str, torch.Tensor]
    val_map: list[float]
    train_loss: list[float]
    best_epoch: int
    recipe: LinearPhaseRecipe
    features: str  # where the features came from


def linear_phase(
    job: Any,
    data: JobData,
    features: torch.Tensor,
    recipe: LinearPhaseRecipe,
    *,
    device: torch.device,
    dim: int,
) -> LinearPhase:
    """Train the head (and ROLE's G) on fixed features; keep the best val epoch (Cole et al.).

    ``features``: (rows of labels.parquet, D) float32. Head init and batch order come from the
    job's seed exactly as in the linear mode.
    """
    from spmlbench.train.seeding import epoch_orders, head_init

    seed = int(getattr(job, "seed", 0) or 0)
    feats = features.to(device=device, dtype=torch.float32)
    x_train, x_val = feats[torch.as_tensor(data.train_rows)], feats[torch.as_tensor(data.val_rows)]
    n, c = len(data.train_rows), data.num_classes
    head = nn.Linear(dim, c).to(device)
    w, b = head_init(seed, dim, c)
    with torch.no_grad():
        head.weight.copy_(w)
        head.bias.copy_(b)
    loss = build_job_loss(job, data, seed).to(device)
    groups = [{"params": list(head.parameters()), "lr": recipe.lr}]
    if hasattr(loss, "param_groups"):
        groups += list(loss.param_groups(recipe.lr))
    opt = torch.optim.Adam(groups, lr=recipe.lr)
    target = data.train_target.to(device)
    val_labels = data.val_labels.to(device)
    orders = epoch_orders(seed, n, recipe.epochs, dim, c)
    val_maps: list[float] = []
    losses: list[float] = []
    best: tuple[int, dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None
    for epoch in range(1, recipe.epochs + 1):
        loss.start_epoch(epoch, recipe.epochs)
        total = torch.zeros((), device=device)
        order = orders[epoch - 1].to(device)
        for idx in torch.split(order, recipe.batch_size):
            value = loss(head(x_train.index_select(0, idx)), target.index_select(0, idx), idx)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            total += value.detach()
        with torch.no_grad():
            loss.end_epoch(lambda: head(x_train))
            vm, _ = scores_map(head(x_val), val_labels)
        losses.append(float(total) / max(1, math.ceil(n / recipe.batch_size)))
        val_maps.append(vm)
        if best is None or vm > val_maps[best[0] - 1]:
            best = (epoch, _cpu_state(head), _cpu_state(loss))
    assert best is not None
    return LinearPhase(head=best[1], loss_state=best[2], val_map=val_maps, train_loss=losses, best_epoch=best[0],
                       recipe=recipe, features="")


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def image_features(
    backbone: str, weights: str, data: JobData, *, image_size: int, device: torch.device, exact: bool,
    workers: int, batch_size: int = 64,
) -> torch.Tensor:
    """Eval-transform features of every labels row with the fine-tuning's starting backbone (in memory),
    through the feature extractor's forward (:func:`spmlbench.features.extract.make_forward`)."""
    from spmlbench.features.backbones import get_backbone
    from spmlbench.features.extract import make_forward

    spec = get_backbone(backbone)
    submit = make_forward(spec, spec.build(weights).eval(), device, fast=device.type == "cuda" and not exact)
    sampler = RowBatchSampler(range(len(data.images)), batch_size)
    loader = eval_loader(ImageDataset(data.image_root, data.images, image_size=image_size, mode=spec.mode), sampler,
                         workers, device)
    return torch.cat([torch.from_numpy(submit(x)()).flatten(1) for x, _ in loader])


def _cached_features(job: Any, backbone: str, weights: str, image_size: int, home: Any) -> torch.Tensor | None:
    """The feature cache if it was built with these weights and image size, else None."""
    from spmlbench.features.backbones import get_backbone
    from spmlbench.features.store import load_features, read_metadata
    from spmlbench.paths import features_path

    path = features_path(job.dataset, backbone, home)
    if not path.exists():
        return None
    meta = read_metadata(path)
    spec = get_backbone(backbone)
    if str(meta.get("weights")) != spec.weights_label(weights) or int(meta.get("image_size", -1)) != image_size:
        return None
    return torch.from_numpy(load_features(job.dataset, backbone, home=home))


def train_linear_init(
    job: Any,
    *,
    home: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    workdir: str | os.PathLike[str],
    exact: bool = False,
    workers: int | None = None,
    progress: StepFn | None = None,
    features: np.ndarray | torch.Tensor | None = None,
    overrides: Mapping[str, Any] | None = None,
    linear_overrides: Mapping[str, Any] | None = None,
    image_size: int | None = None,
    weights: str | None = None,
    labels: Any = None,
    hooks: Hooks | None = None,
) -> E2EResult:
    """LinearInit: the linear phase on cached features (fixed settings), then :func:`train_e2e` from it.

    Features: ``features`` if given, else the cache ``<ds>/features/<backbone>.parquet`` when it
    matches the weights and image size, else extracted in memory with the starting backbone. The
    linear phase's best val epoch gives the head and the loss state (ROLE's label matrix) the
    fine-tuning starts from; ``workdir/linear.pt`` keeps them, so a resumed job skips the phase.
    """
    dev = resolve_device(device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    backbone, weights = backbone_and_weights(job, weights)
    lrecipe = linear_init_recipe(job.loss, job.dataset, linear_overrides)
    from spmlbench.features.backbones import get_backbone

    spec = get_backbone(backbone)
    size = int(image_size or spec.image_size)
    fp = ckpt.fingerprint({"job": job_dict(job), "linear": lrecipe.as_dict(), "backbone": backbone,
                           "weights": weights, "image_size": size})
    saved = ckpt.load_checkpoint(workdir / "linear.pt", expect_fingerprint=fp)
    if saved is None:
        data = load_job_data(job, home, labels)
        source = "given"
        if features is None:
            cached = _cached_features(job, backbone, weights, size, home)
            if cached is not None:
                feats, source = cached, "cache"
            else:
                with backend_flags(dev, exact):
                    feats = image_features(backbone, weights, data, image_size=size, device=dev, exact=exact,
                                             workers=default_workers(dev) if workers is None else workers)
                source = "extracted"
        else:
            feats = torch.as_tensor(features, dtype=torch.float32)
        if feats.shape[0] != len(data.images):
            raise ConfigError(f"features: {feats.shape[0]} rows but labels.parquet has {len(data.images)}; "
                              "rebuild the feature cache")
        phase = linear_phase(job, data, feats, lrecipe, device=dev, dim=int(feats.shape[1]))
        phase.features = source
        saved = {"fingerprint": fp, "head": phase.head, "loss": phase.loss_state, "val_map": phase.val_map,
                 "train_loss": phase.train_loss, "best_epoch": phase.best_epoch, "features": source}
        ckpt.save_checkpoint(workdir / "linear.pt", saved)
    result = train_e2e(job, home=home, device=dev, workdir=workdir, exact=exact, workers=workers, progress=progress,
                       init_head=saved["head"], init_loss_state=saved["loss"], overrides=overrides,
                       image_size=size, weights=weights, labels=labels, hooks=hooks)
    result.linear_phase = {"val_map": list(saved["val_map"]), "train_loss": list(saved["train_loss"]),
                           "best_epoch": int(saved["best_epoch"]), "features": saved["features"],
                           **lrecipe.as_dict()}
    return result
