"""End-to-end fine-tuning on images (mode ``e2e``) and Cole et al.'s LinearInit (mode ``linear-init``).

One job = one backbone + linear head trained with one loss under the loss's own recipe
(``data_manifests/recipes_e2e.toml``; the job's epochs / batch size / lr / early stop and explicit
overrides win). Per epoch: ``loss.start_epoch``, one pass over the training images (protocol
transform with flips), ``loss.end_epoch`` (EM-APL's pseudo-labelling pass over the training
images, eval transform), val mAP, checkpoint. The reported epoch is the best val epoch; its
model is scored on the test split at the end.

Matched seeds: the head init and every epoch's minibatch order come from
:mod:`spmlbench.train.seeding` (the seed only, as in the linear mode); flip decisions from
:func:`spmlbench.train.images.flip_mask` (seed, epoch, row); ROLE's label-matrix init from the
seed. Every loss trained with seed ``s`` sees the same init, batches and augmentations.

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

import contextlib
import copy
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from spmlbench.atomic import atomic_write_text
from spmlbench.errors import ConfigError, SpmlError
from spmlbench.train import checkpoint as ckpt
from spmlbench.train.images import EpochBatchSampler, ImageDataset
from spmlbench.train.recipes_e2e import E2ERecipe, LinearPhaseRecipe, e2e_recipe, linear_init_recipe



# ---------------------------------------------------------------------------------------------
# results and hooks
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class E2EResult:
    """What one end-to-end (or LinearInit) job produced; ``error`` is None on success.

    ``val_map``/``train_loss``: one value per epoch run (1-based epoch i at index i-1);
    ``best_epoch``: 1-based best val epoch (0 when no epoch finished); ``test_map`` and ``test_ap``
    (per class), both x100, of the best epoch's model on the test split.
    ``settings``: the resolved recipe and run options; ``linear_phase``: LinearInit's linear-phase
    metrics (None for mode e2e).
    """

    val_map: list[float]
    train_loss: list[float]
    best_epoch: int
    test_map: float
    test_ap: list[float]
    epochs_run: int
    device: str
    wall_s: float
    error: str | None = None
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    linear_phase: dict[str, Any] | None = None
    train_s: list[float] = dataclasses.field(default_factory=list)  # seconds of each epoch's training pass

    @property
    def ok(self) -> bool:
        """True when the job finished without error."""
        return self.error is None

    @property
    def status(self) -> str:
        """``ok`` or ``failed`` (so a result reads like ``train.linear.ConfigResult`` for ``make_record``)."""
        return "ok" if self.ok else "failed"

    def record_fields(self) -> dict[str, Any]:
        """The result-record columns this trainer fills (architecture.md, result records)."""
        return {
            "status": self.status,
            "error": self.error,
            "epochs_run": self.epochs_run,
            "best_epoch": self.best_epoch,
            "val_map": list(self.val_map),
            "train_loss": list(self.train_loss),
            "test_map": self.test_map,
            "test_ap": list(self.test_ap),
            "wall_s": self.wall_s,
            "device": self.device,
        }

    def to_json(self) -> str:
        """JSON text of the whole result."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, default=float)

    @classmethod
    def from_json(cls, text: str) -> E2EResult:
        """Inverse of :meth:`to_json`."""
        return cls(**json.loads(text))


@dataclasses.dataclass
class TrainContext:
    """Live objects of a run, handed to hooks (tests, instrumentation)."""

    model: nn.Module
    loss: nn.Module
    optimizer: torch.optim.Optimizer
    history: dict[str, Any]
    device: torch.device


@dataclasses.dataclass
class Hooks:
    """Optional callbacks: ``on_start(ctx)`` before the first epoch this call runs,
    ``on_epoch_end(epoch, ctx)`` after an epoch's checkpoint is written."""

    on_start: Callable[[TrainContext], None] | None = None
    on_epoch_end: Callable[[int, TrainContext], None] | None = None


# ---------------------------------------------------------------------------------------------
# job inputs
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class JobData:
    """Images and label matrices of one job (train rows in protocol order)."""

    image_root: Path
    images: list[str]  # every row of labels.parquet
    train_rows: np.ndarray  # global row ids of the split, in order
    val_rows: np.ndarray
    test_rows: np.ndarray
    train_target: torch.Tensor  # (N, C) float32: observed (clean for bce)
    observed_train: torch.Tensor  # (N, C) float32 observed single positives
    val_labels: torch.Tensor  # (Nv, C)
    test_labels: torch.Tensor  # (Nt, C)
    meta: dict[str, Any]

    @property
    def num_classes(self) -> int:
        """C."""
        return int(self.train_target.shape[1])


def _job_dict(job: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(job):
        return {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
    if isinstance(job, Mapping):
        return dict(job)
    return dict(vars(job))


def _hparams(job: Any) -> dict[str, Any]:
    raw = getattr(job, "hparams", None) or {}
    if isinstance(raw, str):
        raw = json.loads(raw)
    return dict(raw)


def _backbone_and_weights(job: Any, weights: str | None) -> tuple[str, str]:
    """``job.backbone`` is ``name`` or ``name:weights``; an explicit ``weights`` wins."""
    raw = str(getattr(job, "backbone", None) or "resnet50")
    name, _, w = raw.partition(":")
    return name, weights or getattr(job, "weights", None) or (w or "default")


def load_job_data(job: Any, home: str | os.PathLike[str] | None = None, labels: Any = None) -> JobData:
    """Labels and image paths of a job's dataset (``labels``: an already loaded labels frame)."""
    from spmlbench.data.store import label_matrix, load_labels
    from spmlbench.data.registry import image_root
    from spmlbench.losses import loss_info

    df = load_labels(job.dataset, home) if labels is None else labels
    meta = dict(df.attrs.get("spmlbench", {}))
    proto = meta.get("protocol", {}) or {}
    for field in ("label_seed", "split_seed"):
        want, have = getattr(job, field, None), proto.get(field)
        if want is not None and have is not None and int(want) != int(have):
            raise ConfigError(
                f"{job.dataset}: labels.parquet was prepared with {field}={have} but the job asks for {want}; "
                f"pass labels resampled with {field}={want} or use {have}"
            )
    split = df["split"].to_numpy()
    rows = {s: np.flatnonzero(split == s) for s in ("train", "val", "test")}
    if len(rows["train"]) == 0:
        raise ConfigError(f"{job.dataset}: no training rows in labels.parquet; re-run 'spmlbench prepare {job.dataset}'")
    clean_train = label_matrix(df, "labels", "train")
    observed_train = label_matrix(df, "observed", "train")
    target = clean_train if loss_info(job.loss).uses_clean_labels else observed_train
    val_column = "observed" if str(getattr(job, "val", "clean") or "clean") == "observed" else "labels"

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return JobData(
        image_root=image_root(job.dataset, home),
        images=df["image"].astype(str).tolist(),
        train_rows=rows["train"],
        val_rows=rows["val"],
        test_rows=rows["test"],
        train_target=t(target),
        observed_train=t(observed_train),
        val_labels=t(label_matrix(df, val_column, "val")),
        test_labels=t(label_matrix(df, "labels", "test")),
        meta=meta,
    )


def build_job_loss(job: Any, data: JobData, seed: int) -> nn.Module:
    """``build_loss`` for the job, with the training target matrix given up front (``init_state``).

    Where the loss needs ``expected_num_pos`` and neither the job nor the dataset's defaults give
    it (e.g. ``digits``), it comes from the labels metadata (average positives per training image).
    """
    from spmlbench.losses import build_loss, loss_info

    hp = _hparams(job)
    info = loss_info(job.loss)
    name = "expected_num_pos"
    if name in info.defaults and info.defaults[name] is None and name not in hp \
            and name not in info.per_dataset.get(job.dataset, {}):
        exp = data.meta.get("expected_positives") or {}
        value = exp.get("computed") or exp.get("paper") if isinstance(exp, Mapping) else exp
        if not value:
            raise ConfigError(f"{job.dataset}: labels metadata has no expected_positives for {job.loss}; "
                              f"pass {job.loss}.{name}=<average positives per image>")
        hp[name] = float(value)
    loss = build_loss(job.loss, num_classes=data.num_classes, num_train=len(data.train_rows), dataset=job.dataset, **hp)
    loss.init_state(data.train_target, seed)  # ROLE's G init (seeded); LL-Cp / EM-APL's stored matrix
    return loss


# ---------------------------------------------------------------------------------------------
# device setup
# ---------------------------------------------------------------------------------------------
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; a named CUDA device must exist."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available here; use --device cpu or auto")
    return dev


def default_workers(device: torch.device) -> int:
    """Decode workers: most cores on CUDA (decoding is the bottleneck), few on CPU (compute shares them)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, min(16, cpus - 1))
    return min(4, cpus // 4)


@contextlib.contextmanager
def backend_flags(device: torch.device, exact: bool) -> Iterator[None]:
    """cuDNN / TF32 settings for the run, restored afterwards (benchmark + TF32 when fast; deterministic when exact)."""
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = not exact
            torch.backends.cudnn.deterministic = exact
            torch.backends.cuda.matmul.allow_tf32 = not exact
            torch.backends.cudnn.allow_tf32 = not exact
        yield
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        ) = saved


# ---------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------
class E2EModel(nn.Module):
    """Backbone (B, 3, H, W) -> (B, D) plus a linear head; the backbone may run under autocast,
    the head always in float32 (fp32 logits: no bf16 ties in the sigmoid scores)."""

    def __init__(self, backbone: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor, amp_dtype: torch.dtype | None = None) -> torch.Tensor:
        """Logits (B, C) float32."""
        if amp_dtype is not None:
            with torch.autocast(device_type=x.device.type, dtype=amp_dtype):
                feats = self.backbone(x)
        else:
            feats = self.backbone(x)
        return self.head(feats.float().flatten(1))

    def freeze_backbone(self, frozen: bool) -> None:
        """Stop (or restart) gradients into the backbone (GR's ``linear_init`` epochs).

        Only the weights are frozen: the model stays in train mode, so batch-norm running
        statistics still update (``requires_grad``-style freezing, as in the reference codes).
        """
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)


def build_model(backbone: str, weights: str, num_classes: int, seed: int) -> tuple[E2EModel, Any]:
    """The job's model: registry backbone (``weights`` default|none) and the seed's head init."""
    from spmlbench.features.backbones import get_backbone
    from spmlbench.train.seeding import head_init

    spec = get_backbone(backbone)
    if spec.arch is None:
        raise ConfigError(f"backbone {backbone!r}: has no trainable network; use resnet50 (or resnet18) for mode e2e")
    net = spec.build(weights)
    model = E2EModel(net, spec.dim, num_classes)
    w, b = head_init(seed, spec.dim, num_classes)
    with torch.no_grad():
        model.head.weight.copy_(w)
        model.head.bias.copy_(b)
    return model, spec


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------
class RowBatchSampler(Sampler[list[int]]):
    """Consecutive batches over a settable list of rows (evaluation; every row, no drop_last)."""

    def __init__(self, rows: Sequence[int], batch_size: int) -> None:
        self.rows = [int(r) for r in rows]
        self.batch_size = int(batch_size)

    def set_rows(self, rows: Sequence[int]) -> None:
        """Select the rows the next iteration covers (persistent workers keep running)."""
        self.rows = [int(r) for r in rows]

    def __len__(self) -> int:
        return (len(self.rows) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.rows), self.batch_size):
            yield self.rows[i : i + self.batch_size]


def _loader(dataset: Any, batch_sampler: Sampler, workers: int, device: torch.device) -> DataLoader:
    kw: dict[str, Any] = {}
    if workers > 0:
        kw.update(persistent_workers=True)  # default prefetch (2 batches per worker): bounded shared memory
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
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
    progress: Any


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
    task = run.progress.add_task(f"epoch {epoch}", total=len(run.train_sampler)) if run.progress else None
    for x, rows in run.train_loader:
        rows = rows.to(run.device, non_blocking=True)
        logits = run.model(_input(run, x), run.amp_dtype)
        value = run.loss(logits, run.target_dev.index_select(0, rows), rows)
        run.optimizer.zero_grad(set_to_none=True)
        value.backward()
        run.optimizer.step()
        total += value.detach().float()
        steps += 1
        if task is not None:
            run.progress.advance(task)
    if task is not None:
        run.progress.remove_task(task)
    return total / max(steps, 1)


@torch.no_grad()
def _predict(run: _Run, rows: np.ndarray) -> torch.Tensor:
    """Float32 logits (len(rows), C) on the device for global rows (eval transform, every row)."""
    run.model.eval()
    run.eval_sampler.set_rows(rows)
    out = [run.model(_input(run, x), run.amp_dtype) for x, _ in run.eval_loader]
    if not out:
        return torch.zeros(0, run.data.num_classes, device=run.device)
    return torch.cat(out)


def _scores_map(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, list[float]]:
    """(mAP x100, per-class AP x100) of float32 sigmoid scores (protocol.md section 6)."""
    from spmlbench.train.evaluate import average_precision

    ap = average_precision(torch.sigmoid(logits.float()), labels.to(logits.device))
    ap100 = (ap * 100.0).cpu()
    return float(ap100.mean()) if ap100.numel() else 0.0, [float(v) for v in ap100]


def _should_stop(recipe: E2ERecipe, val_map: list[float]) -> bool:
    """Early-stop rule after the latest epoch (best val epoch is reported either way)."""
    if recipe.early_stop == "none" or len(val_map) < 2:
        return False
    last, before = val_map[-1], val_map[:-1]
    if recipe.early_stop == "no_improve":
        return not last > max(before)
    return max(val_map) - last > recipe.early_stop_drop  # "drop"


def _optimizer(model: E2EModel, loss: nn.Module, recipe: E2ERecipe, device: torch.device, exact: bool) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]] = [
        {"params": list(model.backbone.parameters()), "lr": recipe.lr},
        {"params": list(model.head.parameters()), "lr": recipe.lr * recipe.head_lr_mult},
    ]
    if hasattr(loss, "param_groups"):
        groups += list(loss.param_groups(recipe.lr))
    fused = device.type == "cuda" and not exact
    return torch.optim.Adam(groups, lr=recipe.lr, fused=fused or None)


def _run_fingerprint(job: Any, recipe: E2ERecipe, extra: Mapping[str, Any]) -> str:
    return ckpt.fingerprint({"job": _job_dict(job), "recipe": recipe.as_dict(), **extra})


def _best_path(workdir: Path, epoch: int) -> Path:
    return workdir / f"best-e{epoch}.pt"


def _prune_best(workdir: Path, keep: int) -> None:
    for p in workdir.glob("best-e*.pt"):
        if p.name != _best_path(workdir, keep).name:
            p.unlink(missing_ok=True)


def _recipe_overrides(job: Any, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {k: getattr(job, k, None) for k in ("epochs", "batch_size", "lr", "early_stop")}
    out.update(dict(overrides or {}))
    return out


def train_e2e(
    job: Any,
    *,
    home: str | os.PathLike[str] | None = None,
    device: str | torch.device = "auto",
    workdir: str | os.PathLike[str],
    exact: bool = False,
    workers: int | None = None,
    progress: bool = True,
    init_head: Mapping[str, torch.Tensor] | None = None,
    init_loss_state: Mapping[str, torch.Tensor] | None = None,
    overrides: Mapping[str, Any] | None = None,
    image_size: int | None = None,
    weights: str | None = None,
    labels: Any = None,
    hooks: Hooks | None = None,
) -> E2EResult:
    """Fine-tune backbone + head end to end for one job; resumable from ``workdir``.

    ``job``: a JobSpec (dataset, loss, hparams, seed, backbone ``name[:weights]``; epochs,
    batch_size, lr, early_stop override the recipe when not None). ``overrides``: further recipe
    settings (``head_lr_mult``, ``eval_batch_size``, ...). ``init_head`` / ``init_loss_state``:
    LinearInit's head and loss state to start from. ``image_size``: default the backbone's (448).
    User errors (missing data, bad settings) raise :class:`SpmlError`; any other failure is
    returned as ``E2EResult.error`` with the epochs finished so far.
    """
    t0 = time.perf_counter()
    dev = resolve_device(device)
    recipe = e2e_recipe(job.loss, job.dataset, _recipe_overrides(job, overrides))
    backbone, weights = _backbone_and_weights(job, weights)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    amp = dev.type == "cuda" and not exact
    settings = {
        **recipe.as_dict(),
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
            return E2EResult.from_json(json.dumps(cached["result"]))
    history: dict[str, Any] = {"val_map": [], "train_loss": [], "train_s": [], "best_epoch": 0, "stopped": False,
                               "wall_s": 0.0}
    try:
        with backend_flags(dev, exact):
            result = _train(
                job, home=home, dev=dev, workdir=workdir, exact=exact, workers=workers, progress=progress,
                init_head=init_head, init_loss_state=init_loss_state, recipe=recipe, backbone=backbone,
                weights=weights, image_size=image_size, labels=labels, hooks=hooks or Hooks(),
                fingerprint=fp, history=history, settings=settings,
            )
    except SpmlError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failed job becomes a failed record, not a crash of the sweep
        return E2EResult(
            val_map=list(history["val_map"]), train_loss=list(history["train_loss"]),
            best_epoch=int(history["best_epoch"]), test_map=math.nan, test_ap=[],
            epochs_run=len(history["val_map"]), device=_device_name(dev),
            wall_s=float(history["wall_s"]) + time.perf_counter() - t0,
            error=f"{type(exc).__name__}: {exc}", settings=settings,
        )
    atomic_write_text(done, json.dumps({"fingerprint": fp, "result": json.loads(result.to_json())}))
    return result


def _train(
    job: Any, *, home: Any, dev: torch.device, workdir: Path, exact: bool, workers: int | None, progress: bool,
    init_head: Mapping[str, torch.Tensor] | None, init_loss_state: Mapping[str, torch.Tensor] | None,
    recipe: E2ERecipe, backbone: str, weights: str, image_size: int | None, labels: Any, hooks: Hooks,
    fingerprint: str, history: dict[str, Any], settings: dict[str, Any],
) -> E2EResult:
    seed = int(getattr(job, "seed", 0) or 0)
    data = load_job_data(job, home, labels)
    model, spec = build_model(backbone, weights, data.num_classes, seed)
    size = int(image_size or spec.image_size)
    settings["image_size"] = size
    if init_head is not None:
        model.head.load_state_dict(dict(init_head))
    loss = build_job_loss(job, data, seed)
    if init_loss_state is not None:
        loss.load_state_dict(dict(init_loss_state))
    channels_last = dev.type == "cuda"
    model.to(dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    loss.to(dev)
    optimizer = _optimizer(model, loss, recipe, dev, exact)
    linear_init_epochs = int(_hparams(job).get("linear_init", 0) or 0) if job.loss == "gr" else 0

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
    bar = _progress() if progress else None
    run = _Run(
        job=job, data=data, recipe=recipe, model=model, spec=spec, loss=loss, optimizer=optimizer, device=dev,
        amp_dtype=torch.bfloat16 if settings["amp"] == "bf16" else None, channels_last=channels_last,
        train_loader=_loader(train_ds, train_sampler, n_workers, dev), train_sampler=train_sampler,
        eval_loader=_loader(eval_ds, eval_sampler, n_workers, dev), eval_sampler=eval_sampler,
        target_dev=data.train_target.to(dev), linear_init_epochs=linear_init_epochs, progress=bar,
    )
    val_labels = data.val_labels.to(dev)
    ctx = TrainContext(model=model, loss=loss, optimizer=optimizer, history=history, device=dev)
    with bar if bar is not None else contextlib.nullcontext():
        if hooks.on_start is not None:
            hooks.on_start(ctx)
        epoch = start
        while epoch <= recipe.epochs and not history["stopped"]:
            te = time.perf_counter()
            loss.start_epoch(epoch, recipe.epochs)
            mean_loss = _train_epoch(run, epoch)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)  # epoch boundary: make the train time honest
            history.setdefault("train_s", []).append(time.perf_counter() - te)
            loss.end_epoch(lambda: _predict(run, data.train_rows))
            val_map, _ = _scores_map(_predict(run, data.val_rows), val_labels)
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
        test_map, test_ap = _scores_map(_predict(run, data.test_rows), data.test_labels.to(dev))
        history["wall_s"] = float(history["wall_s"]) + time.perf_counter() - tt
    return E2EResult(
        val_map=[float(v) for v in history["val_map"]], train_loss=[float(v) for v in history["train_loss"]],
        best_epoch=int(history["best_epoch"]), test_map=test_map, test_ap=test_ap,
        epochs_run=len(history["val_map"]), device=_device_name(dev), wall_s=float(history["wall_s"]),
        settings=settings, train_s=[float(v) for v in history["train_s"]],
    )


def _device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return "cpu"


def _progress() -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    transient=True)


# ---------------------------------------------------------------------------------------------
# LinearInit
# ---------------------------------------------------------------------------------------------
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
            vm, _ = _scores_map(head(x_val), val_labels)
        losses.append(float(total) / max(1, math.ceil(n / recipe.batch_size)))
        val_maps.append(vm)
        if best is None or vm > val_maps[best[0] - 1]:
            best = (epoch, _cpu_state(head), _cpu_state(loss))
    assert best is not None
    return LinearPhase(head=best[1], loss_state=best[2], val_map=val_maps, train_loss=losses, best_epoch=best[0],
                       recipe=recipe, features="")


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def extract_features(
    backbone: str, weights: str, data: JobData, *, image_size: int, device: torch.device, exact: bool,
    workers: int, batch_size: int = 64,
) -> torch.Tensor:
    """Eval-transform features of every labels row with the fine-tuning's starting backbone (in memory)."""
    from spmlbench.features.backbones import get_backbone

    spec = get_backbone(backbone)
    net = spec.build(weights).to(device).eval()
    channels_last = device.type == "cuda"
    if channels_last:
        net.to(memory_format=torch.channels_last)
    amp = torch.bfloat16 if device.type == "cuda" and not exact else None
    sampler = RowBatchSampler(range(len(data.images)), batch_size)
    loader = _loader(ImageDataset(data.image_root, data.images, image_size=image_size, mode=spec.mode), sampler,
                     workers, device)
    out = []
    with torch.no_grad():
        for x, _ in loader:
            x = spec.prepare(x.to(device, non_blocking=True), channels_last=channels_last)
            with torch.autocast(device_type=device.type, dtype=amp) if amp else contextlib.nullcontext():
                out.append(net(x).float().flatten(1))
    return torch.cat(out)


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
    progress: bool = True,
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
    backbone, weights = _backbone_and_weights(job, weights)
    lrecipe = linear_init_recipe(job.loss, job.dataset, linear_overrides)
    from spmlbench.features.backbones import get_backbone

    spec = get_backbone(backbone)
    size = int(image_size or spec.image_size)
    fp = ckpt.fingerprint({"job": _job_dict(job), "linear": lrecipe.as_dict(), "backbone": backbone,
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
                    feats = extract_features(backbone, weights, data, image_size=size, device=dev, exact=exact,
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
