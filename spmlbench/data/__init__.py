"""Datasets: download, format per protocol, split, sample single positives, store as Parquet."""

from spmlbench.data.store import label_matrix, load_labels, read_labels, write_labels

__all__ = [
    "PrepareOptions",
    "dataset_names",
    "get_adapter",
    "image_root",
    "label_matrix",
    "load_labels",
    "prepare_dataset",
    "read_labels",
    "write_labels",
]


def __getattr__(name: str) -> object:
    """Lazy exports (keeps ``import spmlbench.data`` light): prepare and registry helpers."""
    if name in ("PrepareOptions", "prepare_dataset"):
        from spmlbench.data import prepare

        return getattr(prepare, name)
    if name in ("dataset_names", "get_adapter", "image_root"):
        from spmlbench.data import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'spmlbench.data' has no attribute {name!r}")
