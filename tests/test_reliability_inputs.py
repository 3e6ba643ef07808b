"""Ordinary mistakes end in one line (exit 2) or a clean recovery: wrong feature caches, unreadable
records, names escaping the data home, stale prepare staging, bad seeds/devices/spec values, paths
that are files or read-only, and messages that say what actually happened."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from spmlbench import procinfo
from spmlbench.data.staging import OWNER_FILE, ORPHAN_AGE_S
from spmlbench.errors import DataError, os_error_message
from spmlbench.experiments.records import load_records
from spmlbench.experiments.runner import load_dataset
from spmlbench.features.store import load_features, read_features, read_images, write_features
from spmlbench.paths import features_path, labels_path
from test_linear_support import write_dataset
from test_reliability_locks import cli_env, spmlbench_cmd
from test_run_experiment import write_spec

RUN = ("run", "--recipe", "paper", "--dataset", "voc", "--seeds", "0", "--epochs", "1", "--device", "cpu")


def one_line(res, *parts: str) -> None:
    """Exit 2, no traceback, and stderr ends in one error line (after at most a progress bar)."""
    assert res.code == 2, (res.out, res.err)
    lines = res.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in res.err, res.err
    for p in parts:
        assert p in lines[-1], lines[-1]


def test_a_cache_of_another_backbone_copied_in_place_is_refused_end_to_end(home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    target = features_path("voc", "resnet101", home)
    shutil.copy(features_path("voc", "resnet50", home), target)  # used silently, recorded as resnet101, before
    res = subprocess.run(spmlbench_cmd(*RUN, "--losses", "an", "--backbone", "resnet101", "--out", str(tmp_path / "r")),
                         capture_output=True, text=True, timeout=300, env=cli_env(home))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1:] == [
        f"error: {target}: built for backbone 'resnet50', not 'resnet101' (a file copied or renamed into place); "
        "rebuild it with 'spmlbench features voc --backbone resnet101 --force'"]
    assert not (tmp_path / "r" / "records").exists()


def test_a_cache_of_another_dataset_and_non_finite_features(home: Path) -> None:
    write_dataset(home, n=40)
    path = features_path("voc", "resnet50", home)
    feats, _ = read_features(path)
    images = read_images(path)
    write_features(path, images, feats, {"backbone": "resnet50", "dataset": "coco"})
    with pytest.raises(DataError, match="built for dataset 'coco', not 'voc'"):
        load_features("voc", "resnet50", home=home)
    bad = feats.copy()
    bad[3, 1], bad[7, 0] = np.nan, np.inf
    write_features(path, images, bad, {"backbone": "resnet50", "dataset": "voc"})
    with pytest.raises(DataError, match=r"resnet50.parquet: holds 2 NaN or infinite feature values; rebuild it"):
        load_dataset("voc", "resnet50", home)  # before training, not "non-finite logits" after it


def test_an_unreadable_record_is_run_again(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    out = tmp_path / "res"
    args = (*RUN, "--losses", "an,gr", "--out", str(out))
    assert cli(*args).code == 0
    broken = sorted((out / "records").glob("*.parquet"))[0]
    broken.write_bytes(b"PAR1 truncated")
    res = cli(*args)
    assert res.code == 0, res.err
    assert "1 finished job skipped" in res.out and "1 job run" in res.out  # only the unreadable one
    assert len(load_records(out)) == 2 and broken.read_bytes()[:4] == b"PAR1" and broken.stat().st_size > 100


def test_names_escaping_the_data_home_and_unknown_names(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    one_line(cli("features", "../outside", "--quiet"), "dataset '../outside': not a plain name")
    assert not (home.parent / "outside").exists()
    one_line(cli("features", "bogus"), "unknown dataset 'bogus'; choose one of: coco, cub, digits, nuswide, voc", "voc")
    one_line(cli("features", "voc", "--backbone", "../labels"), "unknown backbone '../labels'")
    one_line(cli(*RUN, "--losses", "an", "--backbone", "../labels", "--out", str(tmp_path / "r")),
             "backbone '../labels': not a plain name")
    one_line(cli("prepare", ".hidden"), "unknown dataset '.hidden'")


def test_prepare_removes_staging_folders_of_dead_runs_only(cli, home: Path) -> None:
    gone_pid = subprocess.Popen(["true"])  # a process that has ended (and was reaped)
    gone_pid.wait()
    folders = {name: home / f".digits.partial-{name}" for name in ("dead", "live", "ownerless-old", "ownerless-new")}
    for f in folders.values():
        (f / "raw").mkdir(parents=True)
        (f / "raw" / "big.bin").write_bytes(b"x" * 1000)
    (folders["dead"] / OWNER_FILE).write_text(procinfo.owner_line(gone_pid.pid))
    (folders["live"] / OWNER_FILE).write_text(procinfo.owner_line())  # this process: a prepare still running
    old = time.time() - ORPHAN_AGE_S - 60
    os.utime(folders["ownerless-old"], (old, old))
    res = cli("prepare", "digits")
    assert res.code == 0, res.err
    assert [n for n, f in folders.items() if f.exists()] == ["live", "ownerless-new"]
    assert f"{folders['dead']}: removed the staging folder of an earlier prepare that did not finish" in res.out
    assert labels_path("digits", home).exists() and not (home / "digits" / OWNER_FILE).exists()
    assert sorted(p.name for p in home.glob(".digits.partial-*")) == [".digits.partial-live", ".digits.partial-ownerless-new"]


def test_misleading_messages_fixed(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    out = str(tmp_path / "res")
    spec = write_spec(tmp_path)
    one_line(cli("run", "--experiment", spec, "--losses", "an", "--set", "gr.q3=1.5", "--out", out),
             "--set gr.q3=1.5: loss 'gr' is left out by --losses; add it to --losses or drop the --set")
    one_line(cli("run", "--experiment", spec, "--set", "role.lr_mult=2", "--out", out),
             "loss 'role' is not in experiment 'tiny'")


def test_bad_seeds_devices_and_spec_values(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, n=40)
    out = str(tmp_path / "res")
    one_line(cli(*RUN[:3], "--seeds", "1" * 20, "--losses", "an", "--out", out), "is not a whole number in [0, 2**32)")
    one_line(cli(*RUN[:3], "--seeds", "\u0663", "--losses", "an", "--out", out), "is not a whole number")
    one_line(cli("run", "--dataset", "voc", "--losses", "an", "--seeds", "0", "--device", "cuda:7", "--out", out),
             "--device cuda:7")
    one_line(cli("run", "--dataset", "voc", "--losses", "an", "--seeds", "0", "--device", "cuda:x", "--out", out),
             "the GPU index must be a whole number")
    bad = write_spec(tmp_path, 'overrides = { epochs = "ten" }')
    one_line(cli("run", "--experiment", bad, "--out", out), "overrides epochs = 'ten': must be a whole number in [1, 10000]")
    bad = write_spec(tmp_path, "overrides = { lr = -1 }")
    one_line(cli("run", "--experiment", bad, "--out", out), "overrides lr = -1: must be a finite positive number")
    (tmp_path / "seeds.toml").write_text(open(write_spec(tmp_path)).read().replace("[0, 1]", "[0, 99999999999]"))
    one_line(cli("run", "--experiment", str(tmp_path / "seeds.toml"), "--out", out), "seeds must be")


def test_paths_that_are_files_or_read_only(cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_dataset(home, n=40)
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line(cli(*RUN, "--losses", "an", "--out", str(afile)), f"--out {afile}: cannot write there", "a file stands")
    one_line(cli("report", "--results", str(tmp_path / "nothing"), "--out", str(afile)), f"--out {afile}")
    one_line(cli("prepare", "digits", "--home", str(afile)), str(afile))
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    res = cli("report", "--results", str(tmp_path / "nothing"), "--out", str(tmp_path / "ro"))
    one_line(res, "read-only file system; choose a writable path")
    assert res.out == ""  # nothing printed before the failure


def test_os_error_messages_name_the_path_and_the_fix() -> None:
    full = os_error_message(OSError(errno.ENOSPC, "No space left on device", "/data/x.parquet"))
    assert full == "/data/x.parquet: No space left on device (no space left on the device; free space or choose another path (--out, --home))"
    assert "fix its permissions" in os_error_message(PermissionError(errno.EACCES, "Permission denied", "/r"))
    assert os_error_message(OSError("odd")).startswith("a file operation: OSError")
