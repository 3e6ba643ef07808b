"""What is prepared where: one status row per registered dataset (for ``spmlbench datasets``)."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from spmlbench.data.registry import dataset_names, get_adapter
from spmlbench.paths import dataset_dir


@dataclasses.dataclass(frozen=True)
class DatasetStatus:
    """One dataset's state in the data home (counts etc. are None when it is not prepared)."""

    name: str
    title: str
    prepared: bool
    path: Path
    counts: dict[str, int] | None = None
    num_classes: int | None = None
    avg_positives: float | None = None
    features: tuple[str, ...] = ()
    problem: str | None = None


def _read_metadata(path: Path) -> dict[str, Any]:
    """labels.parquet metadata from its schema only (no label data is read)."""
    import pyarrow.parquet as pq

    from spmlbench.data.store import META_KEY

    raw = (pq.read_schema(path).metadata or {}).get(META_KEY)
    if raw is None:
        raise ValueError("no spmlbench metadata")
    return json.loads(raw)


def dataset_status(name: str, home: str | os.PathLike[str] | None = None) -> DatasetStatus:
    """Status of one registered dataset in the data home."""
    adapter = get_adapter(name)
    folder = dataset_dir(name, home)
    features_dir = folder / "features"
    features = tuple(sorted(p.stem for p in features_dir.glob("*.parquet"))) if features_dir.is_dir() else ()
    labels = folder / "labels.parquet"
    if not labels.is_file():
        return DatasetStatus(name, adapter.title, False, folder, features=features)
    try:
        meta = _read_metadata(labels)
    except Exception as exc:  # noqa: BLE001 - corrupt file: shown, not fatal for the listing
        return DatasetStatus(name, adapter.title, False, folder, features=features, problem=f"unreadable labels.parquet ({exc})")
    positives = (meta.get("expected_positives") or {}).get("computed")
    return DatasetStatus(
        name=name,
        title=str(meta.get("title") or adapter.title),
        prepared=True,
        path=folder,
        counts={k: int(v) for k, v in (meta.get("counts") or {}).items()},
        num_classes=meta.get("num_classes"),
        avg_positives=None if positives is None else float(positives),
        features=features,
    )


def all_statuses(home: str | os.PathLike[str] | None = None) -> list[DatasetStatus]:
    """Status of every registered dataset, in registry order."""
    return [dataset_status(name, home) for name in dataset_names()]
