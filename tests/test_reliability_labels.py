"""labels.parquet contents are checked on load: a malformed file is one line naming it, never a
plausible mAP; the protocol's rows without any positive (NUS-WIDE, CUB) stay valid."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spmlbench.data.store import read_labels, write_labels
from spmlbench.errors import DataError
from spmlbench.paths import labels_path
from test_linear_support import write_dataset
from test_reliability_locks import cli_env, spmlbench_cmd

META = {"num_classes": 3, "protocol": {"label_seed": 1200, "split_seed": 1200}}


def table(labels: list, observed: list, splits: list[str] | None = None, meta: object = META,
          list_type: pa.DataType | None = None) -> pa.Table:
    splits = splits or ["train", "val", "test"][: len(labels)]
    kind = list_type or pa.list_(pa.int8())
    t = pa.table({"image": [f"{i}.png" for i in range(len(labels))], "split": splits,
                  "labels": pa.array(labels, type=kind), "observed": pa.array(observed, type=kind)})
    raw = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return t.replace_schema_metadata({b"spmlbench": raw})


def load(tmp_path: Path, t: pa.Table) -> str:
    path = tmp_path / "labels.parquet"
    pq.write_table(t, path)
    with pytest.raises(DataError) as exc:
        read_labels(path)
    assert str(path) in str(exc.value) and "spmlbench prepare" in str(exc.value)
    return str(exc.value)


Y = [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
S = [[1, 0, 0], [0, 1, 0], [1, 0, 1]]  # train/val: one observed positive; test: the clean labels


def test_a_valid_table_loads_including_rows_without_positives(tmp_path: Path) -> None:
    path = tmp_path / "ok.parquet"
    y = np.array(Y + [[0, 0, 0]], dtype=np.int8)  # a train row with no label: kept, no observed positive
    s = np.array(S + [[0, 0, 0]], dtype=np.int8)
    write_labels(path, ["a", "b", "c", "d"], ["train", "val", "test", "train"], y, s, META)
    df = read_labels(path)
    assert len(df) == 4 and df.attrs["spmlbench"]["num_classes"] == 3


@pytest.mark.parametrize("labels, observed, splits, meta, want", [
    ([[1, 2, 0], [0, 1, 0], [1, 0, 1]], S, None, META, "values other than 0/1 (e.g. 2)"),
    ([[1, -1, 0], [0, 1, 0], [1, 0, 1]], S, None, META, "values other than 0/1 (e.g. -1)"),
    ([[1, 1], [0, 1], [1, 0]], [[1, 0], [0, 1], [1, 0]], None, META, "has 2 values but the dataset has 3 classes"),
    (Y, [[1, 1, 0], [0, 1, 0], [1, 0, 1]], None, META, "row 0 has 2 observed positives (want 1)"),
    (Y, [[0, 0, 0], [0, 1, 0], [1, 0, 1]], None, META, "row 0 has 0 observed positives (want 1)"),
    (Y, [[0, 0, 1], [0, 1, 0], [1, 0, 1]], None, META, "an observed positive that is not a clean positive"),
    (Y, S, ["train", "validation", "test"], META, "unknown split name(s) 'validation'"),
    ([[1, 1, 0], [0, 1], [1, 0, 1]], [[1, 0, 0], [0, 1], [1, 0, 1]], None, {"protocol": {}}, "row 1 has 2 values"),
    ([[1, 1, 0], None, [1, 0, 1]], S, None, META, "column 'labels' has 1 null rows"),
    ([[1, None, 0], [0, 1, 0], [1, 0, 1]], S, None, META, "holds 1 null values"),
])
def test_bad_contents_are_one_line_errors(tmp_path: Path, labels, observed, splits, meta, want: str) -> None:
    assert want in load(tmp_path, table(labels, observed, splits, meta))


def test_nan_labels_and_bad_metadata(tmp_path: Path) -> None:
    nan = [[1.0, float("nan"), 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    assert "values other than 0/1 (e.g. nan)" in load(tmp_path, table(nan, S, list_type=pa.list_(pa.float32())))
    assert "metadata is not valid JSON" in load(tmp_path, table(Y, S, meta=b"{not json"))
    assert "metadata is list, not a JSON object" in load(tmp_path, table(Y, S, meta=[1, 2]))
    assert "missing column(s) observed" in load(tmp_path, table(Y, S).drop_columns(["observed"]))


def test_run_refuses_bad_labels_end_to_end(home: Path, tmp_path: Path) -> None:
    """Labels with a 2 used to train and print a plausible mAP with exit 0."""
    write_dataset(home, n=40)
    path = labels_path("voc", home)
    t = pq.read_table(path)
    y = np.stack(t.column("labels").to_numpy(zero_copy_only=False))
    y[0, 0] = 2
    col = pa.FixedSizeListArray.from_arrays(pa.array(y.reshape(-1), type=pa.int8()), y.shape[1])
    pq.write_table(t.set_column(t.column_names.index("labels"), "labels", col), path)
    res = subprocess.run(spmlbench_cmd("run", "--recipe", "paper", "--dataset", "voc", "--losses", "an", "--seeds", "0", "--epochs", "1",
                                       "--out", str(tmp_path / "res")),
                         capture_output=True, text=True, timeout=300, env=cli_env(home))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [f"error: {path}: column 'labels' holds 1 values other than 0/1 (e.g. 2); "
                                               "re-run 'spmlbench prepare <dataset>'"]
    assert not (tmp_path / "res" / "records").exists()


def test_no_val_rows_is_an_error_not_a_traceback(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    path = labels_path("voc", home)
    t = pq.read_table(path)
    split = ["train" if s == "val" else s for s in t.column("split").to_pylist()]
    pq.write_table(t.set_column(1, "split", pa.array(split)), path)
    res = cli("run", "--recipe", "paper", "--dataset", "voc", "--losses", "an", "--seeds", "0", "--epochs", "1", "--out", str(tmp_path / "r"))
    assert res.code == 2 and "no val rows (training needs train, val and test rows)" in res.err
    assert "Traceback" not in res.err
