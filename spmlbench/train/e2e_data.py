"""An end-to-end job's inputs: its images and label matrices, its loss (with ROLE's state from the
observed labels), and the evaluation batches."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from spmlbench.errors import ConfigError


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
    pseudo: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # CLIP caches the loss reads
    # (clean, observed) labels of the whole training file (train and val rows): only MIME's released
    # ground-truth prior reads them
    train_file: tuple[torch.Tensor, torch.Tensor] | None = None

    @property
    def num_classes(self) -> int:
        """C."""
        return int(self.train_target.shape[1])


def job_dict(job: Any) -> dict[str, Any]:
    """A job (dataclass, mapping or plain object) as a plain dict of its fields."""
    if dataclasses.is_dataclass(job):
        return {f.name: getattr(job, f.name) for f in dataclasses.fields(job)}
    if isinstance(job, Mapping):
        return dict(job)
    return dict(vars(job))


def job_hparams(job: Any) -> dict[str, Any]:
    """The job's hyperparameters as a dict (records store them as a JSON string)."""
    raw = getattr(job, "hparams", None) or {}
    if isinstance(raw, str):
        raw = json.loads(raw)
    return dict(raw)


def backbone_and_weights(job: Any, weights: str | None) -> tuple[str, str]:
    """``job.backbone`` is ``name`` or ``name:weights``; an explicit ``weights`` wins."""
    raw = str(getattr(job, "backbone", None) or "resnet50")
    name, _, w = raw.partition(":")
    return name, weights or getattr(job, "weights", None) or (w or "default")


def load_job_data(job: Any, home: str | os.PathLike[str] | None = None, labels: Any = None) -> JobData:
    """Labels and image paths of a job's dataset (``labels``: an already loaded labels frame)."""
    from spmlbench.data.store import check_protocol, label_matrix, load_labels
    from spmlbench.features.pseudo import load_pseudo
    from spmlbench.train.configs import pseudo_sources
    from spmlbench.data.registry import image_root
    from spmlbench.losses import loss_info

    df = load_labels(job.dataset, home) if labels is None else labels
    meta = dict(df.attrs.get("spmlbench", {}))
    check_protocol([job], meta)
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
        pseudo={src: load_pseudo(job.dataset, src, home) for src in pseudo_sources([job.loss])},
        train_file=(t(np.concatenate([clean_train, label_matrix(df, "labels", "val")])),
                    t(np.concatenate([observed_train, label_matrix(df, "observed", "val")]))),
    )


def build_job_loss(job: Any, data: JobData, seed: int) -> nn.Module:
    """``build_loss`` for the job (its hyperparameters are resolved when the job is built,
    :func:`spmlbench.experiments.jobs.resolve_hparams`), with the training target matrix given up front
    (``init_state``: ROLE's seeded G init, LL-Cp / EM-APL's stored matrix)."""
    from spmlbench.losses import build_loss

    loss = build_loss(job.loss, num_classes=data.num_classes, num_train=len(data.train_rows), dataset=job.dataset,
                      **job_hparams(job))
    loss.init_state(data.train_target, seed)
    from spmlbench.train.configs import attach_pseudo

    attach_pseudo(loss, data.pseudo)
    if hasattr(loss.batched, "set_ground_truth") and data.train_file is not None:
        loss.batched.set_ground_truth(*data.train_file)  # used only with MIME's prior = ground_truth
    return loss


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


def eval_loader(dataset: Any, batch_sampler: Sampler, workers: int, device: torch.device) -> DataLoader:
    """A loader over fixed batches of rows for scoring (pinned memory on CUDA, persistent workers)."""
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
