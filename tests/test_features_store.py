"""Feature cache file: exact round trip, metadata, hash check, zero-copy load, corrupt/mismatched files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from spmlbench.errors import DataError
from spmlbench.features.store import load_features, read_features, write_features
from spmlbench.paths import features_path
from test_features_util import make_dataset


def _random(n: int = 7, d: int = 5) -> np.ndarray:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, d)).astype(np.float32)
    x[0, 0] = np.float32(np.nan)  # odd values must survive bit for bit
    x[1, 1] = -0.0
    x[2, 2] = np.finfo(np.float32).tiny
    return x


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    x = _random()
    path = write_features(tmp_path / "f.parquet", [f"i{k}" for k in range(7)], x, {"backbone": "b"})
    y, meta = read_features(path)
    assert y.dtype == np.float32 and y.shape == (7, 5)
    assert y.tobytes() == x.tobytes()
    assert meta["sha256"] == hashlib.sha256(x.tobytes()).hexdigest()
    assert (meta["rows"], meta["dim"], meta["dtype"], meta["backbone"]) == (7, 5, "float32", "b")
    # no copy after decode: the array views the Arrow buffer and is writable (torch.from_numpy is quiet)
    assert not y.flags.owndata and y.flags.c_contiguous and y.flags.writeable


def test_file_schema_is_fixed_size_float_list_zstd(tmp_path: Path) -> None:
    path = write_features(tmp_path / "f.parquet", [f"i{k}" for k in range(7)], _random(), {})
    schema = pq.read_schema(path)
    assert str(schema.field("image").type) == "string"
    assert str(schema.field("features").type) == "fixed_size_list<element: float>[5]"
    col = pq.ParquetFile(path).metadata.row_group(0).column(1)
    assert col.compression == "ZSTD"
    assert json.loads(schema.metadata[b"spmlbench"])["rows"] == 7


def test_float64_input_is_stored_as_float32(tmp_path: Path) -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    y, _ = read_features(write_features(tmp_path / "f.parquet", list("abcd"), x, {}))
    np.testing.assert_array_equal(y, x.astype(np.float32))


def test_wrong_hash_is_refused(tmp_path: Path) -> None:
    path = write_features(tmp_path / "f.parquet", [f"i{k}" for k in range(7)], _random(), {})
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[b"spmlbench"])
    meta["sha256"] = "0" * 64
    pq.write_table(table.replace_schema_metadata({b"spmlbench": json.dumps(meta).encode()}), path)
    with pytest.raises(DataError, match="sha256") as err:
        read_features(path)
    assert "\n" not in str(err.value)


def test_flipped_bytes_are_detected(tmp_path: Path) -> None:
    x = np.linspace(0, 1, 64 * 16, dtype=np.float32).reshape(64, 16)
    path = write_features(tmp_path / "f.parquet", [f"i{k}" for k in range(64)], x, {})
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    for k in range(mid, mid + 16):
        data[k] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="--force|corrupt|decode|readable"):
        read_features(path)


def test_load_features_missing_cache_says_what_to_run(home: Path) -> None:
    make_dataset(home, n=4)
    with pytest.raises(DataError, match="run 'spmlbench features tiny --backbone resnet50'"):
        load_features("tiny", "resnet50")


def test_load_features_checks_rows_against_labels(home: Path) -> None:
    images = make_dataset(home, n=5)
    x = _random(5, 3)
    write_features(features_path("tiny", "bb"), images, x, {})
    np.testing.assert_array_equal(load_features("tiny", "bb"), x)
    write_features(features_path("tiny", "bb"), images[:4], x[:4], {})  # other row count
    with pytest.raises(DataError, match="4 rows but labels.parquet has 5.*spmlbench features tiny --backbone bb"):
        load_features("tiny", "bb")
    write_features(features_path("tiny", "bb"), images[::-1], x, {})  # same count, other order
    with pytest.raises(DataError, match="row 0"):
        load_features("tiny", "bb")
