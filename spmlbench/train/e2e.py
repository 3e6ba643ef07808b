"""End-to-end fine-tuning on images (mode ``e2e``; LinearInit, mode ``linear-init``, builds on it in
:mod:`spmlbench.train.linear_init`).

One job = one backbone + linear head trained with one loss under a resolved recipe
(:class:`~spmlbench.train.e2e_recipe.E2ERecipe`: the loss's paper recipe with the job's settings on
top, resolved by :func:`spmlbench.experiments.recipes.job_recipes`). Per epoch: ``loss.start_epoch``,
one pass over the training images (protocol transform with flips; SMILE first refreshes its feature
graph), ``loss.end_epoch`` (EM-APL's pseudo-labelling pass over the training
images, eval transform), val mAP, checkpoint. The reported epoch is the best val epoch; its
model is scored on the test split at the end. The epochs, the stop rule and the best epoch are the epoch
engine's (:func:`spmlbench.train.engine.fit`, the job its one member).

Matched seeds: the head init and every epoch's minibatch order come from
:mod:`spmlbench.train.seeding` (the seed only, as in the linear mode); flip decisions from
:func:`spmlbench.train.images.flip_mask` (seed, epoch, row); ROLE's label-matrix init from the
seed; the global RNG (MIME's dropout and samples, SMILE's Beta draws) seeded with the job's seed for the
run, the caller's state restored after. Every loss trained with seed ``s`` sees the same init, batches and
augmentations.

Speed (CUDA): bf16 autocast for the backbone (the head and the loss run in float32), channels-last,
uint8 images pinned and copied ``non_blocking`` (normalised on the device), persistent decode
workers, and no host synchronisation inside the training step (the epoch loss is accumulated on the
device). On every device torch's fused Adam / SGD kernels (:func:`~spmlbench.train.e2e_job.fused_kernels`).
``exact=True`` trains in float32 with TF32 off, deterministic cuDNN and torch's default optimiser kernels
(the reference numerics).

Checkpoints in ``workdir``: ``last.pt`` (model, optimizer, loss state incl. ROLE's G / LL-Cp's
matrix / EM-APL's pseudo labels, RNG state, per-epoch metrics) after every epoch and
``best-e<k>.pt`` for the best val epoch, all written atomically. A killed run resumes after its
last completed epoch and ends with the numbers an uninterrupted run gives.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from spmlbench.atomic import atomic_write_text
from spmlbench.errors import LossError, SpmlError
from spmlbench.runtime import backend_flags, device_label, resolve_device
from spmlbench.train import checkpoint as ckpt
from spmlbench.train.e2e_data import backbone_and_weights, job_dict
from spmlbench.train.e2e_job import (
    end_epoch,
    fused_kernels,
    evaluate_job,
    job_member,
    job_result,
    keep_best_job,
    setup_job,
    start_epoch,
    test_job,
    train_epoch,
)
from spmlbench.train.e2e_recipe import E2ERecipe
from spmlbench.train.engine import fit
from spmlbench.train.hooks import Hooks, TrainContext  # noqa: F401 - part of this module's interface
from spmlbench.train.result import TrainResult

# (epoch, steps done, steps in the epoch), after every training step; the CLI may draw it
StepFn = Callable[[int, int, int], None]


def _run_fingerprint(job: Any, recipe: E2ERecipe, extra: Mapping[str, Any]) -> str:
    return ckpt.fingerprint({"job": job_dict(job), "recipe": dataclasses.asdict(recipe), **extra})


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
    settings, fp = job_settings(job, recipe, dev, exact, backbone, weights, image_size, init_head is not None)
    cached = load_cached_result(workdir, fp)
    if cached is not None:
        return cached
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
    except LossError as exc:  # the loss's own code (a plugin) raised: this job fails, the sweep goes on
        return failed_result(history, dev, settings, str(exc), time.perf_counter() - t0)
    except SpmlError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed job becomes a failed record, not a crash of the sweep
        return failed_result(history, dev, settings, f"{type(exc).__name__}: {exc}", time.perf_counter() - t0)
    save_result(workdir, fp, result)
    return result


def failed_result(history: dict[str, Any], dev: torch.device, settings: dict[str, Any], error: str,
                  extra_s: float = 0.0) -> TrainResult:
    """A failed :class:`TrainResult` carrying the epochs finished so far (``history``) and the one-line ``error``."""
    return TrainResult(
        status="failed", val_map=list(history["val_map"]), train_loss=list(history["train_loss"]),
        best_epoch=int(history["best_epoch"]), test_map=math.nan, test_ap=[], epochs_run=len(history["val_map"]),
        device=device_label(dev), wall_s=float(history["wall_s"]) + extra_s, error=error, settings=settings)


def job_settings(job: Any, recipe: E2ERecipe, dev: torch.device, exact: bool, backbone: str, weights: str,
                 image_size: int | None, linear_init: bool) -> tuple[dict[str, Any], str]:
    """The settings a job's record carries and the fingerprint its checkpoints and result are kept under."""
    amp = dev.type == "cuda" and not exact
    settings = {**dataclasses.asdict(recipe), "backbone": backbone, "weights": weights, "image_size": image_size,
                "exact": bool(exact), "amp": "bf16" if amp else "fp32", "linear_init": linear_init,
                "optimizer_kernels": "fused" if fused_kernels(recipe, exact) else "default",
                "threads": torch.get_num_threads()}
    keys = ("backbone", "weights", "image_size", "exact", "linear_init", "optimizer_kernels")
    return settings, _run_fingerprint(job, recipe, {k: settings[k] for k in keys})


def load_cached_result(workdir: Path, fingerprint: str) -> TrainResult | None:
    """The result a finished run of this fingerprint left in ``workdir/result.json`` (None: none)."""
    done = workdir / "result.json"
    if not done.exists():
        return None
    cached = json.loads(done.read_text())
    return TrainResult.from_json(json.dumps(cached["result"])) if cached.get("fingerprint") == fingerprint else None


def save_result(workdir: Path, fingerprint: str, result: TrainResult) -> None:
    """Keep a finished run's result beside its checkpoints (a re-run of the same fingerprint reads it)."""
    atomic_write_text(workdir / "result.json",
                      json.dumps({"fingerprint": fingerprint, "result": json.loads(result.to_json())}))


def _train(job: Any, **kwargs: Any) -> TrainResult:
    """One job's epochs on its own loaders (see :func:`setup_job` for the arguments)."""
    st = setup_job(job, **kwargs)
    member = job_member(st)

    def step(epoch: int, _active: list[int]) -> list[torch.Tensor]:
        te = time.perf_counter()
        start_epoch(st, epoch)
        mean_loss = train_epoch(st.run, epoch)
        if st.run.device.type == "cuda":
            torch.cuda.synchronize(st.run.device)  # epoch boundary: make the train time honest
        st.epoch_s = time.perf_counter() - te
        return [mean_loss]

    (result,) = fit([member], step=step, evaluate=lambda epoch, _: [evaluate_job(st, epoch)],
                    keep_best=lambda epoch, _: keep_best_job(st, epoch, member.result),
                    after_epoch=lambda epoch, _: end_epoch(st, epoch, member), test=lambda _: [test_job(st)])
    return job_result(st, result)
