"""``spmlbench run --experiment``: a custom spec runs, resumes, applies CLI overrides and writes dumps."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from spmlbench.data.store import label_matrix, load_labels
from spmlbench.experiments.records import dump_dir, load_records
from test_linear_support import write_dataset
from test_run_cli import one_line_error

SPEC = textwrap.dedent("""
    version = 1
    name = "tiny"
    mode = "linear"
    datasets = ["voc"]
    seeds = [0, 1]

    [[groups]]
    name = "plain"
    losses = ["an"]

    [[groups]]
    name = "dumps"
    losses = ["gr"]
    dump_predictions = true
    {extra}
""")


def write_spec(tmp_path: Path, extra: str = "") -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(SPEC.format(extra=extra))
    return str(path)


def sklearn_map(probs: np.ndarray, labels: np.ndarray) -> float:
    return 100.0 * float(np.mean([average_precision_score(labels[:, c], probs[:, c]) for c in range(labels.shape[1])]))


def test_experiment_runs_resumes_and_dumps(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home)
    out = tmp_path / "res"
    spec = write_spec(tmp_path)
    r = cli("run", "--recipe", "paper", "--experiment", spec, "--epochs", "3", "--out", str(out))
    assert r.code == 0, r.err
    assert "4 jobs run" in r.out
    df = load_records(out)
    assert sorted(zip(df["loss"], df["seed"])) == [("an", 0), ("an", 1), ("gr", 0), ("gr", 1)]
    assert set(df["experiment"]) == {"tiny"} and set(df["epochs"]) == {3}

    labels_df = load_labels("voc", home)
    y_val = label_matrix(labels_df, "labels", "val")
    s_val = label_matrix(labels_df, "observed", "val")
    for _, row in df.iterrows():
        d = dump_dir(out, row["job_id"])
        if row["loss"] == "an":
            assert not d.exists()
            continue
        files = sorted(d.glob("epoch_*.npz"))
        assert [f.name for f in files] == [f"epoch_{e}.npz" for e in range(1, row["epochs_run"] + 1)]
        for e, f in enumerate(files, start=1):
            z = np.load(f)
            assert z["probs"].dtype == np.float32 and z["probs"].shape == y_val.shape
            assert z["labels"].dtype == np.int8 and z["observed"].dtype == np.int8
            assert np.array_equal(z["labels"], y_val) and np.array_equal(z["observed"], s_val)
            assert ((z["probs"] > 0) & (z["probs"] < 1)).all()
            assert sklearn_map(z["probs"], y_val) == pytest.approx(row["val_map"][e - 1], abs=1e-3)

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "records").iterdir()}
    r = cli("run", "--recipe", "paper", "--experiment", spec, "--epochs", "3", "--out", str(out))
    assert r.code == 0 and "4 finished jobs skipped" in r.out and "0 jobs run" in r.out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "records").iterdir()} == stamps

    gr0 = df[(df["loss"] == "gr") & (df["seed"] == 0)]["job_id"].iloc[0]
    (dump_dir(out, gr0) / "complete").unlink()  # dumps of a job never finished: it runs again
    for f in dump_dir(out, gr0).glob("epoch_*.npz"):
        f.unlink()
    r = cli("run", "--recipe", "paper", "--experiment", spec, "--epochs", "3", "--out", str(out))
    assert r.code == 0 and "3 finished jobs skipped" in r.out and "1 job run" in r.out
    assert len(list(dump_dir(out, gr0).glob("epoch_*.npz"))) == df.set_index("job_id").loc[gr0, "epochs_run"]


def test_experiment_overrides_from_the_cli(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home)
    out = tmp_path / "res"
    spec = write_spec(tmp_path, 'overrides = { lr = 0.002 }')
    r = cli("run", "--recipe", "paper", "--experiment", spec, "--seeds", "1", "--datasets", "voc", "--set", "gr.q3=1.5",
            "--epochs", "1", "--batch-size", "16", "--out", str(out))
    assert r.code == 0, r.err
    df = load_records(out).set_index("loss")
    assert set(df["seed"]) == {1} and set(df["epochs"]) == {1} and set(df["batch_size"]) == {16}
    assert df.loc["gr", "lr"] == 0.002 and json.loads(df.loc["gr", "hparams"])["q3"] == 1.5
    assert df.loc["an", "lr"] == 1e-4  # the an group has no override: its recipe
    r = cli("run", "--recipe", "paper", "--experiment", spec, "--seeds", "1", "--lr", "0.01", "--epochs", "1", "--out", str(out),
            "--losses", "an")
    assert r.code == 0 and "1 job run" in r.out
    assert sorted(load_records(out)["lr"]) == [1e-4, 0.002, 0.01]


def test_experiment_errors(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home)
    out = str(tmp_path / "res")
    one_line_error(cli("run", "--experiment", write_spec(tmp_path), "--set", "role.lr_mult=2", "--out", out), "role")
    one_line_error(cli("run", "--experiment", write_spec(tmp_path), "--datasets", "coco", "--out", out), "coco")
    spec = write_spec(tmp_path, 'overrides = { label_seed = 7 }')  # the prepared labels use 1200
    one_line_error(cli("run", "--experiment", spec, "--epochs", "1", "--out", out), "label_seed=1200",
                   "spmlbench prepare voc")
    one_line_error(cli("run", "--experiment", str(tmp_path / "missing.toml"), "--out", out), "missing.toml")
