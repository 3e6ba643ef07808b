"""Extract backbone features for every row of ``labels.parquet`` into the Parquet feature cache.

Pipeline: DataLoader workers decode and resize images to uint8 (pinned memory on CUDA), the
device scales/normalises them and runs the backbone (CUDA: bf16 autocast + channels_last unless
``exact``; CPU: fp32). Rows are processed in fixed chunks; each finished chunk is saved under
``<ds>/features/.<backbone>.partial/`` so an interrupted run resumes where it stopped. Workers
may deliver batches out of order: every output row is placed by its row index. The cache appears
(atomic rename) only once every chunk is done.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spmlbench.errors import ConfigError, DataError
from spmlbench.data.registry import get_adapter, image_root
from spmlbench.features.backbones import BackboneSpec, check_weights_choice, get_backbone, output_dim
from spmlbench.features.partial import PartialExtraction, images_sha256
from spmlbench.features.store import alignment_problem, read_features, read_images, write_features
from spmlbench.paths import features_path
from spmlbench.progress import Reporter, Sink
from spmlbench.runtime import available_cpus, backend_flags, device_label, precision_label, resolve_device

DEFAULT_CHUNK_ROWS = 1024


def default_backbone(dataset: str) -> str:
    """The dataset's default backbone (its registry entry: ``pixels`` for digits, ``resnet50`` for the others)."""
    return get_adapter(dataset).default_backbone


class ImageRows(Dataset):
    """Row ``i`` -> ``(i, uint8 image array, ok)``; an unreadable image gives ``ok = False`` (reported by the caller)."""

    def __init__(self, root: Path, images: list[str], spec: BackboneSpec, image_size: int) -> None:
        self.root = Path(root)
        self.images = images
        self.spec = spec
        self.image_size = image_size
        channels = (3,) if spec.mode == "RGB" else ()
        self._blank = np.zeros((image_size, image_size, *channels), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor, bool]:
        try:
            arr = self.spec.load_image(self.root / self.images[i], self.image_size)
        except Exception:  # reported in the main process with the path and the reason
            return i, torch.from_numpy(self._blank), False
        return i, torch.from_numpy(arr), True


def _image_error(root: Path, image: str) -> DataError:
    """A one-line error for an image that could not be read."""
    path = root / image
    if not path.exists():
        return DataError(f"{path}: image missing; re-run 'spmlbench prepare' or restore the image folder")
    try:
        from PIL import Image

        with Image.open(path) as img:
            img.load()
        reason = "unreadable"
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
    return DataError(f"{path}: cannot decode image ({reason}); replace the file and re-run the same command")


def make_forward(
    spec: BackboneSpec, model: torch.nn.Module, device: torch.device, fast: bool
) -> Callable[[torch.Tensor], Callable[[], np.ndarray]]:
    """A function that starts a uint8 batch (CPU, maybe pinned) and returns a waiter for its (B, D) float32 result.

    ``fast``: bf16 autocast and channels_last (the CUDA default); otherwise plain fp32. On CUDA
    the result is copied back asynchronously into pinned memory, so the caller can start the
    next batch before waiting for this one (the GPU never idles between batches).
    """
    model = model.to(device)
    if fast:
        model = model.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def submit(batch: torch.Tensor) -> Callable[[], np.ndarray]:
        x = spec.prepare(batch.to(device, non_blocking=True), channels_last=fast)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            y = model(x)
        y = y.float()
        if device.type != "cuda":
            out = y.numpy()
            return lambda: out
        host = torch.empty(y.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(y, non_blocking=True)
        done = torch.cuda.Event()
        done.record()

        def result() -> np.ndarray:
            done.synchronize()
            return host.numpy()

        return result

    return submit


def _defaults(spec: BackboneSpec, device: torch.device, batch_size: int | None, workers: int | None) -> tuple[int, int]:
    """Batch size and worker count: explicit values win; else by device and backbone."""
    cpus = available_cpus()
    if batch_size is None:
        batch_size = 256 if spec.arch is None else (64 if device.type == "cuda" else 16)
    if workers is None:
        if spec.arch is None:
            workers = 0  # decoding small images is cheaper than starting workers
        elif device.type == "cuda":
            workers = min(16, cpus)
        else:
            workers = min(2, max(0, cpus - 1))
    if batch_size < 1 or workers < 0:
        raise ConfigError(f"--batch-size {batch_size} / --workers {workers}: need batch size >= 1 and workers >= 0")
    return batch_size, workers


def _stale_reason(path: Path, images: list[str], want: dict[str, Any], exact: bool) -> str | None:
    """None when the cache at ``path`` is valid for this request, else why it must be rebuilt."""
    try:
        _, meta = read_features(path)
        problem = alignment_problem(read_images(path), images)
    except DataError as exc:
        return str(exc).split(": ", 1)[-1].split(";")[0]
    if problem is not None:
        return f"{problem} (stale)"
    for key in ("backbone", "weights", "image_size"):
        if meta.get(key) != want[key]:
            return f"built with {key} {meta.get(key)!r}, {want[key]!r} requested"
    if exact and meta.get("precision") != "fp32":
        return f"computed in {meta.get('precision')}, --exact asks for fp32"
    return None


def extract_features(
    dataset: str,
    backbone: str | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    device: str = "auto",
    batch_size: int | None = None,
    workers: int | None = None,
    weights: str | None = None,
    exact: bool = False,
    progress: Sink | None = None,
    force: bool = False,
    image_size: int | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Path:
    """Compute (or resume, or reuse) ``<ds>/features/<backbone>.parquet`` and return its path.

    ``backbone`` None takes the dataset's default; ``weights`` ``"default"``/None loads the
    registry weights, ``"none"`` a random init (recorded); ``exact`` turns off bf16/channels_last
    on CUDA. A valid cache made with the same backbone, weights and image size is reused unless
    ``force``; a stale or corrupt one is rebuilt. ``image_size`` overrides the backbone's size
    (tests, quick runs; recorded in the metadata). ``progress`` receives rows done and notes as events.
    """
    from spmlbench.data.store import load_labels

    name = backbone or default_backbone(dataset)
    spec = get_backbone(name)
    weights_choice = weights or "default"
    check_weights_choice(weights_choice)
    size = int(image_size or spec.image_size)
    if size < 8:
        raise ConfigError(f"image size {size}: too small; use at least 8")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows {chunk_rows}: must be >= 1")
    dev = torch.device("cpu") if spec.arch is None else resolve_device(device)
    batch_size, workers = _defaults(spec, dev, batch_size, workers)
    report = Reporter(progress)
    say = report.note

    labels = load_labels(dataset, home)
    images = labels["image"].tolist()
    target = features_path(dataset, name, home)
    want = {"backbone": name, "weights": spec.weights_label(weights_choice), "image_size": size}
    if target.exists() and not force:
        reason = _stale_reason(target, images, want, exact)
        if reason is None:
            say(f"{target}: up to date ({len(images)} rows)")
            return target
        say(f"{target}: {reason}; rebuilding")

    dim = output_dim(spec, size)
    plan = {
        **want,
        "dataset": dataset,
        "rows": len(images),
        "dim": dim,
        "images_sha256": images_sha256(images),
        "chunk_rows": int(chunk_rows),
        "batch_size": batch_size,
        "precision": precision_label(dev, exact),
        "device": device_label(dev),
        "torch": torch.__version__,
    }
    partial, discarded = PartialExtraction.open(target.parent / f".{name}.partial", plan)
    if discarded:
        say(f"{partial.folder}: chunks from a different setting discarded; starting over")
    todo = partial.missing()
    done_rows = len(images) - sum(stop - start for start, stop in todo)
    if todo and done_rows:
        say(f"{target}: resuming, {done_rows} of {len(images)} rows already done")
    if todo:
        forward = make_forward(spec, spec.build(weights_choice), dev, fast=plan["precision"] != "fp32")
        _run_chunks(
            partial,
            todo,
            ImageRows(image_root(dataset, home), images, spec, size),
            forward,
            batch_size=batch_size,
            workers=workers,
            exact=exact,
            dev=dev,
            report=report,
            label=f"{dataset}/{name}",
            done_rows=done_rows,
        )

    import torchvision

    meta = {
        **plan,
        "source": "extract",
        "transform": spec.transform_text(size),
        "torchvision": torchvision.__version__,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_features(target, images, partial.assemble(), meta)
    partial.remove()
    say(f"{target}: wrote {len(images)} x {dim} features")
    return target


def _run_chunks(
    partial: PartialExtraction,
    todo: list[tuple[int, int]],
    rows: ImageRows,
    forward: Callable[[torch.Tensor], Callable[[], np.ndarray]],
    *,
    batch_size: int,
    workers: int,
    exact: bool,
    dev: torch.device,
    report: Reporter,
    label: str,
    done_rows: int,
) -> None:
    """Compute the chunks ``todo``; each batch lies inside one chunk, rows are placed by index."""
    batches = [list(range(b, min(b + batch_size, stop))) for start, stop in todo for b in range(start, stop, batch_size)]
    loader = DataLoader(
        rows,
        batch_sampler=batches,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        in_order=workers == 0,  # let a fast worker deliver first: rows are placed by index anyway
        prefetch_factor=4 if workers else None,
        multiprocessing_context=("fork" if workers and sys.platform.startswith("linux") else None),
    )
    chunk_rows = partial.chunk_rows
    pending: dict[int, list[Any]] = {}  # chunk start -> [buffer, rows filled]

    def place(index: np.ndarray, result: Callable[[], np.ndarray]) -> None:
        """Put a finished batch into its chunk buffer (by row index); save the chunk when full."""
        start = int(index[0]) // chunk_rows * chunk_rows
        stop = min(start + chunk_rows, partial.n_rows)
        entry = pending.setdefault(start, [np.empty((stop - start, partial.dim), dtype=np.float32), 0])
        entry[0][index - start] = result()
        entry[1] += len(index)
        if entry[1] == stop - start:
            partial.write_chunk(start, stop, entry[0])
            del pending[start]
        advance(len(index))

    with report.task(label, partial.n_rows, "images", completed=done_rows) as advance, backend_flags(dev, exact):
        in_flight = None
        for idx, batch, ok in loader:
            if not bool(ok.all()):
                bad = int(idx[~ok][0])
                raise _image_error(rows.root, rows.images[bad])
            submitted = (idx.numpy(), forward(batch))  # start this batch before waiting for the last one
            if in_flight is not None:
                place(*in_flight)
            in_flight = submitted
        if in_flight is not None:
            place(*in_flight)
