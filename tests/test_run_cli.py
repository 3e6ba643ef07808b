"""``spmlbench run``: one-line errors (exit 2), skip/--force messages, the offline digits run."""

from __future__ import annotations

import math

from pathlib import Path

import pytest

from spmlbench.experiments.records import load_records
from test_linear_support import write_dataset


def one_line_error(result, *needles: str) -> None:
    assert result.code == 2, (result.out, result.err)
    lines = [ln for ln in result.err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, result.err
    for n in needles:
        assert n in lines[0], lines[0]


def test_errors(cli, home: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "res")
    one_line_error(cli("run", "--dataset", "nope", "--out", out), "nope")
    one_line_error(cli("run", "--dataset", "voc", "--losses", "an,bogus", "--out", out), "bogus")
    one_line_error(cli("run", "--dataset", "voc", "--out", out), "spmlbench prepare voc")
    one_line_error(cli("run", "--mode", "bogus", "--out", out), "--mode")
    one_line_error(cli("run", "--image-size", "32", "--out", out), "--image-size")  # linear mode has no images
    one_line_error(cli("run", "--address", "auto", "--out", out), "--executor ray")
    one_line_error(cli("run", "--processes", "0", "--out", out), "--processes 0")
    one_line_error(cli("run", "--processes", "many", "--out", out), "--processes many")
    write_dataset(home, backbone="other")  # labels, but no resnet50 features
    one_line_error(cli("run", "--dataset", "voc", "--out", out), "spmlbench features voc --backbone resnet50")
    write_dataset(home)
    one_line_error(cli("run", "--dataset", "voc", "--losses", "gr", "--set", "gr.nope=1", "--out", out), "nope")
    one_line_error(cli("run", "--dataset", "voc", "--losses", "gr", "--set", "gr.q3", "--out", out), "gr.q3")
    one_line_error(cli("run", "--dataset", "voc", "--losses", "gr", "--seeds", "a", "--out", out), "--seeds")


def test_skip_and_force(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home)
    out = str(tmp_path / "res")
    args = ("run", "--recipe", "paper", "--dataset", "voc", "--losses", "an,gr", "--seeds", "0,1", "--epochs", "2", "--out", out,
            "--grid", "gr.q3=1,1.5")
    r = cli(*args)
    assert r.code == 0, r.err
    assert "6 jobs run" in r.out and "GR Loss (q3=1.5)" in r.out and "AN" in r.out  # the paper's names
    assert "mean ± std over seeds" in r.out and "selected on val" not in r.out  # --recipe paper: one point
    r = cli(*args)
    assert r.code == 0 and "6 finished jobs skipped" in r.out and "0 jobs run" in r.out
    r = cli(*args, "--force")
    assert r.code == 0 and "6 jobs run" in r.out
    assert len(load_records(out)) == 6


def test_failed_job_is_reported_and_its_record_skipped_on_rerun(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home)
    args = ("run", "--recipe", "paper", "--dataset", "voc", "--losses", "an,epr", "--seeds", "0", "--epochs", "2",
            "--set", "epr.expected_num_pos=1e30", "--out", str(tmp_path / "res"))  # the regulariser overflows
    r = cli(*args)
    assert r.code == 1, r.err  # the other job ran; the exit status says the results are incomplete
    assert "2 jobs run" in r.out and "failed: epr seed 0" in r.out and "non-finite loss in epoch 1" in r.out
    assert "(1 failed)" in r.out  # the table cell
    assert f"error: 1 of 2 jobs failed; their errors are in the 'error' column of their records in {tmp_path / 'res' / 'records'}" in " ".join(r.err.split())
    assert len(load_records(tmp_path / "res")) == 2
    r = cli(*args)
    assert r.code == 1 and "2 finished jobs skipped, 1 of them failed" in r.out and "0 jobs run" in r.out
    assert "error: 1 of 2 jobs failed" in r.err


@pytest.mark.slow
def test_processes_split_the_run_with_the_same_results(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home)
    args = ("run", "--recipe", "paper", "--dataset", "voc", "--losses", "an,gr,role", "--seeds", "0,1", "--epochs", "2", "--device", "cpu")
    r1 = cli(*args, "--out", str(tmp_path / "one"))
    r2 = cli(*args, "--out", str(tmp_path / "two"), "--processes", "2")
    assert r1.code == 0 and r2.code == 0, (r1.err, r2.err)
    assert "6 jobs run" in r2.out
    a = load_records(tmp_path / "one").set_index("job_id").sort_index()
    b = load_records(tmp_path / "two").set_index("job_id").sort_index()
    assert list(a.index) == list(b.index) and (b["status"] == "ok").all()
    assert (a["test_map"] - b["test_map"]).abs().max() < 1e-4  # equal up to matmul rounding across thread counts


@pytest.mark.slow
def test_digits_small_run_offline(cli, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    r = cli("run", "--recipe", "paper", "--losses", "bce,an", "--seeds", "0,1", "--epochs", "4", "--out", str(out))
    assert r.code == 0, r.err
    df = load_records(out)
    assert set(df["dataset"]) == {"digits"} and (df["status"] == "ok").all() and len(df) == 4
    means = df.groupby("loss")["test_map"].mean()
    assert means["bce"] > means["an"] > 10
    # the printed table is mean ± sample std (n - 1) over seeds, the same statistic as the report
    for loss in ("bce", "an"):
        vals = df[df["loss"] == loss]["test_map"].to_numpy(dtype=float)
        m, sd = vals.mean(), math.sqrt(((vals - vals.mean()) ** 2).sum() / (len(vals) - 1))
        assert f"{m:.2f} ± {sd:.2f}" in r.out


@pytest.mark.slow
def test_digits_default_run(cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = cli("run")
    assert r.code == 0, r.err
    df = load_records(tmp_path / "results")
    assert len(df) == 16 * 8 + 16 * 2  # the grid on seed 0, seeds 1 and 2 at each loss's selected point
    df = df[df["selected"].astype(bool)]
    assert len(df) == 16 * 3 and (df["status"] == "ok").all()
    means = df.groupby("loss")["test_map"].mean()
    assert means["bce"] > means["an"]
    assert "± " in r.out


@pytest.mark.ray
def test_processes_auto_means_one_per_ray_task(cli, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ray task owns --cpus-per-job CPUs, not the node: auto does not split inside it; a number does."""
    from spmlbench.cli import run_cmd
    from spmlbench.experiments.runner import RunSummary

    write_dataset(home)
    seen: list[object] = []

    def fake_ray(jobs, out, ray_opts, progress, run_kwargs):  # noqa: ANN001
        seen.append(run_kwargs["processes"])
        return RunSummary()

    monkeypatch.setattr(run_cmd, "_run_ray", fake_ray)
    args = ("run", "--recipe", "paper", "--dataset", "voc", "--losses", "an", "--seeds", "0", "--out", str(tmp_path / "r"), "--executor", "ray")
    assert cli(*args).code == 0
    assert cli(*args, "--processes", "3").code == 0
    assert seen == [1, 3]
