"""Cole et al.'s LinearInit (mode ``linear-init``): a linear phase on the backbone's features, then
end-to-end fine-tuning from that head (ROLE's label matrix carries over)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spmlbench.errors import ConfigError
from spmlbench.runtime import backend_flags, default_workers, resolve_device
from spmlbench.train import checkpoint as ckpt
from spmlbench.train.configs import LinearData, TrainConfig, freeze_hparams
from spmlbench.train.e2e import StepFn, train_e2e
from spmlbench.train.e2e_data import (
    JobData,
    RowBatchSampler,
    backbone_and_weights,
    eval_loader,
    job_dict,
    job_hparams,
    load_job_data,
)
from spmlbench.train.e2e_recipe import E2ERecipe, LinearPhaseRecipe
from spmlbench.train.hooks import Hooks
from spmlbench.train.images import ImageDataset
from spmlbench.train.linear import train_linear
from spmlbench.train.result import TrainResult


def linear_phase(job: Any, data: JobData, features: torch.Tensor, recipe: LinearPhaseRecipe, *,
                 device: torch.device) -> dict[str, Any]:
    """Train the head (and ROLE's G) on fixed features with the linear trainer
    (:func:`spmlbench.train.linear.train_linear`); keep the best val epoch (Cole et al.).

    ``features``: (rows of labels.parquet, D) float32. Head init and batch order come from the
    job's seed exactly as in the linear mode. Returns the best epoch's ``head`` and ``loss`` state
    (a single loss's keys) with the phase's ``val_map``, ``train_loss`` and ``best_epoch``.
    """
    feats = features.to(dtype=torch.float32)

    def rows(r: np.ndarray) -> torch.Tensor:
        return feats.index_select(0, torch.as_tensor(r, dtype=torch.long))

    # the job's targets are already chosen (observed, or clean for bce) and so are its val labels
    linear = LinearData(job.dataset, rows(data.train_rows), rows(data.val_rows), rows(data.test_rows),
                        data.train_target, data.train_target, data.val_labels, data.val_labels, data.test_labels,
                        pseudo=data.pseudo)
    config = TrainConfig(loss=job.loss, hparams=freeze_hparams(job_hparams(job)),
                         seed=int(getattr(job, "seed", 0) or 0), lr=recipe.lr, batch_size=recipe.batch_size,
                         epochs=recipe.epochs, early_stop="none")
    (res,) = train_linear(linear, [config], device=device, keep_best=True)
    if not res.ok or res.best_state is None:
        raise RuntimeError(f"LinearInit linear phase of {job.loss}: {res.error or 'no epoch finished'}")
    loss_state = {f"batched.{k}": v for k, v in (res.best_state["loss"] or {}).items()}  # a SingleLoss's keys
    return {"head": res.best_state["head"], "loss": loss_state, "val_map": res.val_map, "train_loss": res.train_loss,
            "best_epoch": res.best_epoch}


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
    recipe: E2ERecipe,
    linear_recipe: LinearPhaseRecipe,
    home: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    workdir: str | os.PathLike[str],
    exact: bool = False,
    workers: int | None = None,
    progress: StepFn | None = None,
    features: np.ndarray | torch.Tensor | None = None,
    image_size: int | None = None,
    weights: str | None = None,
    labels: Any = None,
    hooks: Hooks | None = None,
) -> TrainResult:
    """LinearInit: the linear phase on cached features (``linear_recipe``: Cole et al.'s fixed settings),
    then :func:`train_e2e` from it (``recipe``).

    Features: ``features`` if given, else the cache ``<ds>/features/<backbone>.parquet`` when it
    matches the weights and image size, else extracted in memory with the starting backbone. The
    linear phase's best val epoch gives the head and the loss state (ROLE's label matrix) the
    fine-tuning starts from; ``workdir/linear.pt`` keeps them, so a resumed job skips the phase.
    """
    dev = resolve_device(device)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    backbone, weights = backbone_and_weights(job, weights)
    from spmlbench.features.backbones import get_backbone

    spec = get_backbone(backbone)
    size = int(image_size or spec.image_size)
    fp = ckpt.fingerprint({"job": job_dict(job), "linear": dataclasses.asdict(linear_recipe), "backbone": backbone,
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
                                             workers=default_workers(dev, workers))
                source = "extracted"
        else:
            feats = torch.as_tensor(features, dtype=torch.float32)
        if feats.shape[0] != len(data.images):
            raise ConfigError(f"features: {feats.shape[0]} rows but labels.parquet has {len(data.images)}; "
                              "rebuild the feature cache")
        saved = {"fingerprint": fp, "features": source, **linear_phase(job, data, feats, linear_recipe, device=dev)}
        ckpt.save_checkpoint(workdir / "linear.pt", saved)
    result = train_e2e(job, home=home, device=dev, workdir=workdir, exact=exact, workers=workers, progress=progress,
                       init_head=saved["head"], init_loss_state=saved["loss"], recipe=recipe,
                       image_size=size, weights=weights, labels=labels, hooks=hooks)
    result.linear_phase = {"val_map": list(saved["val_map"]), "train_loss": list(saved["train_loss"]),
                           "best_epoch": int(saved["best_epoch"]), "features": saved["features"],
                           **dataclasses.asdict(linear_recipe)}
    return result
