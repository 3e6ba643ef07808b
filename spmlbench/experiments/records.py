"""Result records: one Parquet file with one row per finished job, ``<out>/records/<job_id>.parquet``.

Columns: the JobSpec fields (``hparams`` as JSON), ``job_id``, ``experiment``, ``status`` (ok |
failed), ``error``, ``epochs_run``, ``best_epoch``, ``val_map`` and ``train_loss`` (lists, one per
epoch run), ``test_map`` (at the best val epoch, x100), ``test_ap`` (per class, x100), ``wall_s``,
``device``, ``versions`` (JSON), ``git_rev``, ``features_sha256``, ``created`` (UTC ISO time).
Files are written atomically, so a reader never sees half a record.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from spmlbench.atomic import atomic_path
from spmlbench.errors import DataError
from spmlbench.experiments.jobs import JobSpec
from spmlbench.train.linear import ConfigResult

RECORDS_DIR = "records"


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
    """The source tree's git revision (``+dirty`` when modified), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return rev + ("+dirty" if dirty else "") if rev else "unknown"


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
])
COLUMNS = _SCHEMA.names


def make_record(spec: JobSpec, result: ConfigResult, *, experiment: str = "", wall_s: float = 0.0,
                device: str = "cpu", features_sha256: str = "") -> dict[str, Any]:
    """The record row of a finished job."""
    row = spec.to_dict()
    row["hparams"] = json.dumps(row["hparams"], sort_keys=True)
    row.update(
        job_id=spec.job_id, experiment=experiment, status=result.status, error=result.error,
        epochs_run=result.epochs_run, best_epoch=result.best_epoch, val_map=list(result.val_map),
        train_loss=list(result.train_loss), test_map=result.test_map, test_ap=list(result.test_ap),
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
