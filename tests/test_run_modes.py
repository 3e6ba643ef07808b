"""``spmlbench run --mode e2e|linear-init`` and the executor options.

The end-to-end runs use a tiny image set written as ``voc`` into the test's data home (coloured
squares, 3 classes, 44 images) and test_e2e's two-conv ``micro`` backbone (random weights, 32 px),
so each training takes well under a second.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spmlbench.experiments.records import load_records, record_path
from test_e2e import micro  # noqa: F401 - fixture: backbone name "micro" resolves to a two-conv net
from test_linear_support import write_dataset
from test_run_cli import one_line_error

C = 3
E2E = ("--dataset", "voc", "--losses", "an", "--seeds", "0", "--backbone", "micro", "--weights", "none",
       "--image-size", "32", "--epochs", "1", "--device", "cpu", "--workers", "0")


def write_images(home: Path, n_train: int = 24, n_val: int = 8, n_test: int = 12) -> None:
    """labels.parquet + PNG images of a tiny 3-class set under ``home/voc`` (no feature cache)."""
    from spmlbench.data.store import write_labels

    rng = np.random.RandomState(0)
    n = n_train + n_val + n_test
    labels = (rng.rand(n, C) < 0.45).astype(np.int8)
    labels[labels.sum(1) == 0, 0] = 1
    observed = labels.copy()
    split = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    (home / "voc" / "images").mkdir(parents=True)
    names = []
    for i in range(n):
        arr = rng.randint(0, 60, size=(32, 40, 3)).astype(np.uint8)
        for c in np.flatnonzero(labels[i]):
            arr[5:20, 2 + 12 * c: 12 + 12 * c] = (230, 30, 30) if c == 0 else (30, 200, 40) if c == 1 else (40, 60, 220)
        names.append(f"img_{i:03d}.png")
        Image.fromarray(arr).save(home / "voc" / "images" / names[-1])
        if split[i] != "test":
            observed[i] = 0
            observed[i, rng.choice(np.flatnonzero(labels[i]))] = 1
    meta = {"dataset": "voc", "protocol": {"label_seed": 1200, "split_seed": 1200},
            "expected_positives": {"computed": float(labels.sum(1).mean()), "paper": None}}
    write_labels(home / "voc" / "labels.parquet", names, split, labels, observed, meta)


def test_e2e_mode_records_skip_resume_force(cli, home: Path, tmp_path: Path, micro: str) -> None:
    write_images(home)
    out = tmp_path / "res"
    args = E2E
    r = cli("run", *args, "--mode", "e2e", "--out", str(out))
    assert r.code == 0, r.err
    assert "1 job run" in r.out
    df = load_records(out)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["mode"] == "e2e" and row["status"] == "ok", row["error"]
    assert row["backbone"] == "micro" and row["weights"] == "none" and row["image_size"] == 32
    assert row["epochs"] == 1 and row["epochs_run"] == 1 and row["best_epoch"] == 1
    assert len(row["test_ap"]) == C and 0 < row["test_map"] <= 100
    assert row["device"] == "cpu" and json.loads(row["settings"])["image_size"] == 32
    work = out / "work" / row["job_id"]
    assert (work / "last.pt").exists() and (work / "best-e1.pt").exists()  # checkpoints kept
    rec = record_path(out, row["job_id"])
    stamp = rec.stat().st_mtime_ns

    r = cli("run", *args, "--mode", "e2e", "--out", str(out))
    assert r.code == 0 and "1 finished job skipped" in r.out and "0 jobs run" in r.out
    assert rec.stat().st_mtime_ns == stamp

    rec.unlink()  # killed after training, before the record: the work folder finishes it
    r = cli("run", *args, "--mode", "e2e", "--out", str(out))
    assert r.code == 0 and "1 job run" in r.out
    again = load_records(out).iloc[0]
    assert list(again["val_map"]) == list(row["val_map"]) and again["test_map"] == row["test_map"]

    r = cli("run", *args, "--mode", "e2e", "--out", str(out), "--force", "--drop-checkpoints")
    assert r.code == 0 and "1 job run" in r.out
    forced = load_records(out).iloc[0]
    assert forced["val_map"] == pytest.approx(list(row["val_map"]), abs=1e-4)  # retrained: same seed, same numbers
    assert not work.exists()


def test_linear_init_mode(cli, home: Path, tmp_path: Path, micro: str) -> None:
    write_images(home)
    out = tmp_path / "res"
    args = E2E
    r = cli("run", *args, "--mode", "linear-init", "--out", str(out))
    assert r.code == 0, r.err
    row = load_records(out).iloc[0]
    assert row["mode"] == "linear-init" and row["status"] == "ok", row["error"]
    phase = json.loads(row["settings"])["linear_phase"]
    assert phase["features"] == "extracted" and 1 <= phase["best_epoch"] <= len(phase["val_map"])
    r = cli("run", *args, "--mode", "e2e", "--out", str(out))
    assert r.code == 0 and "1 job run" in r.out  # another mode is another job
    df = load_records(out)
    assert sorted(df["mode"]) == ["e2e", "linear-init"] and row["job_id"] in set(df["job_id"])


def test_e2e_needs_images_not_features(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home)  # labels and features, no images folder
    one_line_error(cli("run", "--dataset", "voc", "--mode", "e2e", "--out", str(tmp_path)), "images", "prepare voc")


def test_ray_executor_without_ray(cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    r = cli("run", "--executor", "ray", "--out", str(tmp_path))
    one_line_error(r, "--executor ray: the ray extra is not installed; run pip install -e '.[ray]'")
    one_line_error(cli("run", "--executor", "slurm", "--out", str(tmp_path)), "--executor")


def test_ray_executor_gets_the_jobs_and_options(cli, home: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from spmlbench.experiments.runner import RunSummary

    calls: list[tuple[list, Path, dict]] = []

    def fake_run_jobs_ray(jobs, out_dir, **kw):  # stands in for the ray executor
        calls.append((list(jobs), Path(out_dir), kw))
        return RunSummary()

    from spmlbench.experiments.ray_executor import import_ray  # the real check, against the fake ray below

    fake = types.ModuleType("spmlbench.experiments.ray_executor")
    fake.run_jobs_ray = fake_run_jobs_ray
    fake.import_ray = import_ray  # `run` imports both from this module when it runs
    monkeypatch.setitem(sys.modules, "ray", types.ModuleType("ray"))
    monkeypatch.setitem(sys.modules, "spmlbench.experiments.ray_executor", fake)
    write_dataset(home)
    out = tmp_path / "res"
    r = cli("run", "--recipe", "paper", "--dataset", "voc", "--losses", "an,gr", "--seeds", "0,1", "--epochs", "1", "--out", str(out),
            "--executor", "ray", "--address", "10.0.0.1:6379", "--gpus-per-job", "0.5", "--cpus-per-job", "2")
    assert r.code == 0, r.err
    (jobs, got_out, kw), = calls
    assert sorted((j.loss, j.seed) for j in jobs) == [("an", 0), ("an", 1), ("gr", 0), ("gr", 1)]
    assert got_out == out
    assert kw["address"] == "10.0.0.1:6379" and kw["gpus_per_job"] == 0.5 and kw["cpus_per_job"] == 2
    assert kw["device"] == "auto" and kw["force"] is False and kw["experiment"] == ""
    assert {"workers", "dumps", "keep_checkpoints", "reference_loop"} <= set(kw)
    assert not (out / "records").exists()  # nothing ran in-process
