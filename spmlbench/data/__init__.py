"""Datasets: download, format per protocol, split, sample single positives, store as Parquet."""

from spmlbench.data.store import label_matrix, load_labels, read_labels, write_labels

__all__ = ["label_matrix", "load_labels", "read_labels", "write_labels"]
