"""Result records: one Parquet file with one row per finished job, ``<out>/records/<job_id>.parquet``.

Columns: the JobSpec fields (``hparams`` as JSON), ``job_id``, ``experiment``, ``status`` (ok |
failed), ``error``, ``epochs_run``, ``best_epoch``, ``val_map`` and ``train_loss`` (lists, one per
epoch run), ``test_map`` (at the best val epoch, x100), ``test_ap`` (per class, x100), ``wall_s``,
``device``, ``versions`` (JSON), ``git_rev``, ``features_sha256``, ``created`` (UTC ISO time),
``loss_version`` (the built-in formula's version), ``loss_source`` / ``loss_origin`` (a plugin's hash and
file), ``recipe`` (the recipe that gave the settings: ``cole``, ``paper`` or the e2e family); for the
end-to-end modes also ``weights``, ``image_size``, ``exact`` and ``settings`` (JSON: the resolved
recipe and run options, LinearInit's linear phase); ``selected`` (bool; null until a run marks it)
and ``selection`` (JSON: the rule and the chosen point of its group; see
:mod:`spmlbench.experiments.selection`). Files are written atomically, so a reader never
sees half a record.

Prediction dumps (jobs with ``dump_predictions``): ``<out>/dumps/<job_id>/epoch_<e>.npz`` (1-based
``e``, one per epoch the job ran) with ``probs`` (N_val, C) float32 sigmoid scores on val, ``labels``
(N_val, C) int8 clean and ``observed`` (N_val, C) int8; ``<out>/dumps/<job_id>/complete`` marks a
finished set (written after the dumps, before the record).
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spmlbench.atomic import atomic_path
from spmlbench.errors import DataError
from spmlbench.experiments.jobs import JobSpec
from spmlbench.train.result import TrainResult
from spmlbench.modes import LINEAR

RECORDS_DIR = "records"
DUMPS_DIR = "dumps"
DUMPS_COMPLETE = "complete"


def record_path(out_dir: str | os.PathLike[str], job_id: str) -> Path:
    """``<out>/records/<job_id>.parquet``."""
    return Path(out_dir) / RECORDS_DIR / f"{job_id}.parquet"


@functools.cache
def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    import numpy
    import sklearn
    import torch

    from spmlbench import __version__

    return {"spmlbench": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "scikit-learn": sklearn.__version__, "pandas": pd.__version__, "pyarrow": pa.__version__}


@functools.cache
def git_rev() -> str:
    """The git revision of the code that runs: a checkout's (``+dirty`` when modified), else the commit pip
    recorded when it installed this copy from git (``pip install git+URL``: PEP 610's ``direct_url.json``), else
    ``unknown`` (a copy inside somebody else's repository never takes that repository's revision)."""
    return _checkout_rev(Path(__file__).resolve().parents[2]) or _installed_rev() or "unknown"


def _checkout_rev(root: Path) -> str | None:
    """``root``'s HEAD (``+dirty`` when modified) when ``root`` is the top of a git checkout, else None."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        if not top or Path(top).resolve() != root:
            return None
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "") if rev else None


def _installed_rev() -> str | None:
    """The git commit pip installed this copy from (None: not installed from git, or the metadata found is of
    another copy than the one running)."""
    import importlib.metadata

    running = Path(__file__).resolve().parents[1] / "__init__.py"
    try:
        dist = importlib.metadata.distribution("spmlbench")
        if Path(str(dist.locate_file("spmlbench/__init__.py"))).resolve() != running:
            return None
        info = json.loads(dist.read_text("direct_url.json") or "{}").get("vcs_info", {})
    except (importlib.metadata.PackageNotFoundError, OSError, ValueError, AttributeError):
        return None
    commit = info.get("commit_id") if isinstance(info, dict) and info.get("vcs") == "git" else None
    return str(commit) if commit else None


_SCHEMA = pa.schema([
    ("job_id", pa.string()), ("experiment", pa.string()),
    ("dataset", pa.string()), ("loss", pa.string()), ("hparams", pa.string()), ("mode", pa.string()),
    ("seed", pa.int64()), ("label_seed", pa.int64()), ("split_seed", pa.int64()), ("backbone", pa.string()),
    ("epochs", pa.int64()), ("batch_size", pa.int64()), ("lr", pa.float64()), ("val", pa.string()),
    ("early_stop", pa.string()),
    ("status", pa.string()), ("error", pa.string()), ("epochs_run", pa.int64()), ("best_epoch", pa.int64()),
    ("val_map", pa.list_(pa.float64())), ("train_loss", pa.list_(pa.float64())),
    ("test_map", pa.float64()), ("test_ap", pa.list_(pa.float64())),
    ("wall_s", pa.float64()), ("device", pa.string()), ("versions", pa.string()), ("git_rev", pa.string()),
    ("features_sha256", pa.string()), ("created", pa.string()),
    ("weights", pa.string()), ("image_size", pa.int64()), ("exact", pa.bool_()), ("settings", pa.string()),
    ("selected", pa.bool_()), ("selection", pa.string()),
    ("loss_source", pa.string()), ("loss_origin", pa.string()),
    ("loss_version", pa.int64()), ("recipe", pa.string()),
])
COLUMNS = _SCHEMA.names


def _linear_settings(spec: JobSpec) -> dict[str, Any]:
    """The resolved linear recipe of a job: optimizer, the values it trains with, and the source of the
    recipe the plan named (``spec.recipe``: Cole et al.'s protocol or the loss's transposed paper recipe)."""
    from spmlbench.experiments.recipes import recipe_source

    try:
        source = recipe_source(spec.loss, spec.dataset, "linear", spec.recipe) if spec.recipe else ""
    except Exception:  # an unreadable recipe file must not lose a finished result
        source = ""
    return {"optimizer": "adam", "lr": spec.lr, "batch_size": spec.batch_size, "epochs": spec.epochs,
            "early_stop": spec.early_stop, "val": spec.val, "recipe_source": source}


def _settings(result: TrainResult, spec: JobSpec) -> str:
    settings = dict(result.settings)
    if not settings and spec.mode == LINEAR:
        settings = _linear_settings(spec)
    phase = result.linear_phase
    if phase is not None:
        settings["linear_phase"] = phase
    return json.dumps(settings, sort_keys=True, default=str) if settings else ""


def _loss_origin(spec: JobSpec) -> str | None:
    """The file that defined a plugin loss (None for built-ins)."""
    if spec.loss_source is None:
        return None
    from spmlbench.losses import LOSSES

    return LOSSES.get(spec.loss).origin if spec.loss in LOSSES else None


def make_record(spec: JobSpec, result: TrainResult, *, experiment: str = "", wall_s: float = 0.0,
                device: str = "cpu", features_sha256: str = "") -> dict[str, Any]:
    """The record row of a finished job (``result``: what its trainer returned)."""
    row = spec.to_dict()
    row.update(weights=spec.weights, image_size=spec.image_size, exact=spec.exact, settings=_settings(result, spec),
               loss_source=spec.loss_source, loss_origin=_loss_origin(spec), loss_version=spec.loss_version,
               recipe=spec.recipe or None)
    row["hparams"] = json.dumps(row["hparams"], sort_keys=True)
    row.update(
        job_id=spec.job_id, experiment=experiment, **result.record_fields(),
        wall_s=float(wall_s), device=device, versions=json.dumps(versions(), sort_keys=True), git_rev=git_rev(),
        features_sha256=features_sha256,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    return row


def write_record(out_dir: str | os.PathLike[str], row: dict[str, Any]) -> Path:
    """Write one record atomically to ``<out>/records/<job_id>.parquet``."""
    table = pa.Table.from_pylist([row], schema=_SCHEMA)
    path = record_path(out_dir, row["job_id"])
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_record(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The row of one record file; None when it is not a readable one-row record (truncated, corrupt,
    another file's bytes)."""
    try:
        table = pq.read_table(path, schema=_SCHEMA)
    except Exception:  # pyarrow raises several types for a corrupt file
        return None
    rows = table.to_pylist() if table.num_rows == 1 else []
    return rows[0] if rows and rows[0].get("job_id") and rows[0].get("status") else None


def update_record(out_dir: str | os.PathLike[str], job_id: str, **fields: Any) -> Path:
    """Rewrite one record with ``fields`` changed (atomically; used to mark the selected grid points)."""
    path = record_path(out_dir, job_id)
    row = read_record(path)
    if row is None:
        raise DataError(f"{path}: unreadable result record; delete it and re-run the job")
    row.update(fields)
    return write_record(out_dir, row)


def load_records(out_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Every record under ``<out>/records`` as one DataFrame (empty, with the columns, if none)."""
    files = sorted((Path(out_dir) / RECORDS_DIR).glob("*.parquet"))
    frames = []
    for f in files:
        try:
            frames.append(pq.read_table(f, schema=_SCHEMA).to_pandas())
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(f"{f}: unreadable result record ({exc}); delete it and re-run the job") from None
    if not frames:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in COLUMNS})
    return pd.concat(frames, ignore_index=True)


def dump_dir(out_dir: str | os.PathLike[str], job_id: str) -> Path:
    """``<out>/dumps/<job_id>``."""
    return Path(out_dir) / DUMPS_DIR / job_id


def write_dump(out_dir: str | os.PathLike[str], job_id: str, epoch: int, probs: np.ndarray, labels: np.ndarray,
               observed: np.ndarray) -> Path:
    """Write one epoch's val prediction dump atomically (arrays cast to float32 / int8)."""
    path = dump_dir(out_dir, job_id) / f"epoch_{int(epoch)}.npz"
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, probs=np.asarray(probs, dtype=np.float32), labels=np.asarray(labels, dtype=np.int8),
                 observed=np.asarray(observed, dtype=np.int8))
    return path


def clear_dumps(out_dir: str | os.PathLike[str], job_id: str) -> None:
    """Remove a job's dumps (before it is (re-)trained)."""
    shutil.rmtree(dump_dir(out_dir, job_id), ignore_errors=True)


def finish_dumps(out_dir: str | os.PathLike[str], job_id: str, epochs_run: int) -> None:
    """Drop dumps of epochs after ``epochs_run`` (early stop, failure) and mark the set complete."""
    d = dump_dir(out_dir, job_id)
    d.mkdir(parents=True, exist_ok=True)
    for f in d.glob("epoch_*.npz"):
        e = f.stem.partition("_")[2]
        if not e.isdigit() or int(e) > epochs_run:
            f.unlink(missing_ok=True)
    with atomic_path(d / DUMPS_COMPLETE) as tmp:
        Path(tmp).write_text(f"{epochs_run}\n")


def dumps_complete(out_dir: str | os.PathLike[str], job_id: str) -> bool:
    """Whether the job's dumps were finished (see :func:`finish_dumps`)."""
    return (dump_dir(out_dir, job_id) / DUMPS_COMPLETE).exists()
