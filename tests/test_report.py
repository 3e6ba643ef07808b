"""Report tables and renderers on synthetic result records (columns of docs/architecture.md)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from spmlbench.report import build_report
from spmlbench.report.render import render_text, to_csv

LOSSES = ["bce", "an", "epr", "gr"]
SEEDS = [0, 1, 2]


def record(dataset: str, loss: str, seed: int, test_map: float, hparams: dict[str, Any] | None = None, *,
           mode: str = "linear", experiment: str = "", status: str = "ok") -> dict[str, Any]:
    """One result record with every column of the record contract."""
    hp = hparams or {}
    spec = json.dumps([dataset, loss, seed, hp, mode], sort_keys=True)
    return {
        "dataset": dataset, "loss": loss, "hparams": json.dumps(hp, sort_keys=True), "mode": mode, "seed": seed,
        "label_seed": 1200, "split_seed": 1200, "backbone": "resnet50", "epochs": 8, "batch_size": 8,
        "lr": 1e-4, "val": "clean", "early_stop": True, "job_id": hashlib.sha256(spec.encode()).hexdigest()[:16],
        "experiment": experiment, "status": status, "error": "" if status == "ok" else "boom", "epochs_run": 8,
        "best_epoch": 4, "val_map": [10.0, 20.0], "train_loss": [0.7, 0.6], "test_map": test_map,
        "test_ap": [test_map, test_map], "wall_s": 1.5, "device": "cpu",
        "versions": json.dumps({"spmlbench": "0.1.0", "torch": "2.14.1"}), "git_rev": "deadbeef",
        "features_sha256": hashlib.sha256(dataset.encode()).hexdigest(), "created": "2026-01-01T00:00:00",
    }


def write_records(out: Path, recs: list[dict[str, Any]]) -> Path:
    """Write one Parquet file per record under ``out/records``."""
    d = out / "records"
    d.mkdir(parents=True, exist_ok=True)
    for r in recs:
        pd.DataFrame([r]).to_parquet(d / f"{r['job_id']}.parquet")
    return out


def cell(rec: dict[str, Any], group: str = "main", coords: dict[str, Any] | None = None,
         jobs: list[str] | None = None) -> dict[str, Any]:
    """A manifest cell reporting ``rec`` (its only job unless ``jobs`` lists the grid points)."""
    return {"group": group, "row": rec["loss"], "loss": rec["loss"], "dataset": rec["dataset"], "mode": rec["mode"],
            "seed": rec["seed"], "coords": coords or {}, "jobs": jobs or [rec["job_id"]], "selected": rec["job_id"]}


def write_run(out: Path, cells: list[dict[str, Any]], *, run_id: str = "run-test", experiment: str | None = None,
              datasets: list[str] | None = None, updated: str = "2026-01-01T00:00:00+00:00") -> Path:
    """A run manifest (``<out>/runs/<run_id>.json``) whose cells are ``cells``."""
    from spmlbench.experiments.spec import experiments_dir, load_experiment

    block = None
    if experiment:
        exp = load_experiment(experiment, datasets=datasets)
        text = (experiments_dir() / f"{experiment}.toml").read_text()
        block = {"name": exp.name, "path": str(exp.path), "sha256": hashlib.sha256(text.encode()).hexdigest(),
                 "toml": text, "datasets": list(exp.datasets), "seeds": list(exp.seeds), "mode": exp.mode}
    jobs = {j: {} for c in cells for j in c["jobs"]}
    manifest = {"format": 1, "run_id": run_id, "created": updated, "updated": updated, "status": "finished",
                "command": f"spmlbench run ({run_id})", "select": "first-seed", "experiment": block, "jobs": jobs,
                "cells": cells, "trained": list(jobs)}
    (out / "runs").mkdir(parents=True, exist_ok=True)
    (out / "runs" / f"{run_id}.json").write_text(json.dumps(manifest))
    return out


def digits_values(seed: int = 7) -> dict[tuple[str, str, int], float]:
    rng = np.random.default_rng(seed)
    return {(ds, loss, s): round(float(rng.uniform(30, 90)), 4)
            for ds in ("digits", "voc") for loss in LOSSES for s in SEEDS}


@pytest.fixture
def results(tmp_path: Path) -> tuple[Path, dict[tuple[str, str, int], float]]:
    vals = digits_values()
    vals.pop(("voc", "epr", 1))  # one missing seed
    vals = {k: v for k, v in vals.items() if not (k[0] == "voc" and k[1] == "an")}  # one missing cell
    recs = [record(ds, loss, s, v) for (ds, loss, s), v in vals.items()]
    failed = record("digits", "an", 9, 0.0, status="failed")  # failed jobs never enter a table
    cells = [cell(r) for r in [*recs, failed]]
    cells += [cell(record("voc", "an", s, 0.0)) for s in SEEDS] + [cell(record("voc", "epr", 1, 0.0))]  # no record
    out = write_records(tmp_path / "res", [*recs, failed])
    return write_run(out, cells), vals


def main_csv(rep) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(to_csv(rep)["main"]))


def test_main_numbers_equal_records(results) -> None:
    out, vals = results
    rep = build_report(out)
    df = main_csv(rep)
    for ds in ("digits", "voc"):
        for loss in LOSSES:
            xs = [vals[(ds, loss, s)] for s in SEEDS if (ds, loss, s) in vals]
            row = df[(df["method"] == loss) & (df["dataset"] == ds)]
            if not xs:
                assert row.empty or np.isnan(row["mean"].iloc[0])
                continue
            assert row["n"].iloc[0] == len(xs)
            assert row["mean"].iloc[0] == pytest.approx(statistics.mean(xs), abs=1e-9)
            assert row["std"].iloc[0] == pytest.approx(statistics.stdev(xs), abs=1e-9)
    md = render_text(rep, "md")
    gr = [vals[("digits", "gr", s)] for s in SEEDS]
    assert f"{statistics.mean(gr):.2f} ± {statistics.stdev(gr):.2f}" in md


def test_published_numbers_and_difference(results) -> None:
    out, vals = results
    df = main_csv(build_report(out))
    row = df[(df["method"] == "gr") & (df["dataset"] == "voc")].iloc[0]
    assert row["published"] == pytest.approx(89.83)  # Chen et al. 2024, docs/published-results.md
    mean = statistics.mean(vals[("voc", "gr", s)] for s in SEEDS)
    assert row["diff"] == pytest.approx(mean - 89.83, abs=1e-9)
    bce = df[(df["method"] == "bce") & (df["dataset"] == "voc")].iloc[0]
    assert bce["published"] == pytest.approx(89.42) and bce["published_std"] == pytest.approx(0.27)
    assert np.isnan(df[(df["method"] == "gr") & (df["dataset"] == "digits")]["published"].iloc[0])


def test_published_columns_only_where_numbers_are_published(results) -> None:
    out, vals = results
    md = render_text(build_report(out), "md")
    header = next(line for line in md.splitlines() if line.startswith("| Method |"))
    cols = [c.strip() for c in header.strip("|").split("|")]
    assert cols == ["Method", "VOC", "VOC pub.", "Δ", "digits"]  # digits has no published numbers
    gr = next(line for line in md.splitlines() if line.startswith("| GR Loss |"))
    cells = [c.strip() for c in gr.strip("|").split("|")]
    assert len(cells) == 5 and cells[2] == "89.83"
    mean = statistics.mean(vals[("digits", "gr", s)] for s in SEEDS)
    assert cells[4].startswith(f"{mean:.2f}")


def test_best_per_column_excludes_upper_bound(results) -> None:
    out, vals = results
    df = main_csv(build_report(out))
    for ds in ("digits", "voc"):
        means = {l: statistics.mean(v for (d, ll, _), v in vals.items() if d == ds and ll == l)
                 for l in LOSSES if l != "bce" and any(d == ds and ll == l for d, ll, _ in vals)}
        best = max(means, key=means.get)
        marked = df[(df["dataset"] == ds) & df["best"]]["method"].tolist()
        assert marked == [best]


def test_missing_cell_shown_as_missing_not_zero(results) -> None:
    out, _ = results
    rep = build_report(out)
    md = render_text(rep, "md")
    an_row = next(line for line in md.splitlines() if line.startswith("| AN |"))
    cells = [c.strip() for c in an_row.strip("|").split("|")]
    voc = cells[1 + 3 * 0]  # columns: Method, then VOC (3 cols), digits (3 cols)
    assert voc == "—" and "0.00" not in an_row
    assert cells[2] == "85.89 ± 0.38"  # the published number is still shown
    assert "voc: 4 cells (4 missing): an, epr" in md and "digits: 1 cells (1 failed): an" in md
    assert "run-test.json" in md  # where the job ids are


@pytest.mark.parametrize("fmt", ["md", "latex", "html"])
def test_text_formats_render(results, fmt: str) -> None:
    out, vals = results
    text = render_text(build_report(out), fmt)
    gr_mean = f"{statistics.mean(vals[('voc', 'gr', s)] for s in SEEDS):.2f}"
    assert gr_mean in text
    assert "Run: run-test" in text and "Feature hashes" in text and "torch 2.14.1" in text
    if fmt == "md":
        assert "| GR Loss |" in text and "| --- |" in text
    if fmt == "latex":
        assert "\\begin{tabular}" in text and "\\end{tabular}" in text and "$\\pm$" in text
        assert "±" not in text and "—" not in text
        assert all(ord(ch) < 128 for ch in text), sorted({ch for ch in text if ord(ch) >= 128})  # pdflatex-safe
    if fmt == "html":
        assert "<table>" in text and "<td>GR Loss</td>" in text


def test_latex_escape_of_the_report_symbols() -> None:
    from spmlbench.report.render import latex_escape

    assert latex_escape("p <0.001; χ² = 4 × 2; 0.1–0.5 ≤ 5% of a_b; Demšar") == (
        r"p $<$0.001; $\chi$$^2$ = 4 $\times$ 2; 0.1--0.5 $\leq$ 5\% of a\_b; Dem\v{s}ar")


def test_csv_parses_back_to_the_same_numbers(results) -> None:
    out, vals = results
    rows = list(csv.DictReader(io.StringIO(to_csv(build_report(out))["main"])))
    got = {(r["method"], r["dataset"]): float(r["mean"]) for r in rows if r["mean"] not in ("", "nan")}
    for (ds, loss) in {(d, l) for d, l, _ in vals}:
        xs = [vals[(ds, loss, s)] for s in SEEDS if (ds, loss, s) in vals]
        assert got[(loss, ds)] == pytest.approx(statistics.mean(xs), abs=1e-9)


def test_paired_pvalue_equals_scipy(results) -> None:
    out, vals = results
    paired = pd.read_csv(io.StringIO(to_csv(build_report(out))["paired"]))
    row = paired[(paired["dataset"] == "digits") & (paired["other"] == "an")].iloc[0]
    a = [vals[("digits", "gr", s)] for s in SEEDS]
    b = [vals[("digits", "an", s)] for s in SEEDS]
    assert row["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert row["diff"] == pytest.approx(statistics.mean(x - y for x, y in zip(a, b)), abs=1e-9)
    assert bool(row["beyond_noise"]) == (abs(row["diff"]) > 0.5)
    # matched seeds only: EPR on VOC lacks seed 1, so the pair uses seeds 0 and 2
    epr = paired[(paired["dataset"] == "voc") & (paired["other"] == "epr")].iloc[0]
    assert epr["n"] == 2
    a = [vals[("voc", "gr", s)] for s in (0, 2)]
    b = [vals[("voc", "epr", s)] for s in (0, 2)]
    assert epr["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)


def test_experiment_report_counts_missing_cells(tmp_path: Path) -> None:
    recs = [record("digits", loss, s, 50.0 + s) for loss in ("an", "gr") for s in SEEDS]
    empty = [record("digits", loss, s, 0.0) for loss in ("bce", "role") for s in SEEDS]  # planned, never run
    out = write_records(tmp_path / "res", recs)
    write_run(out, [cell(r) for r in recs + empty], experiment="table1", datasets=["voc", "digits"])
    text = render_text(build_report(out, "table1"), "md")
    assert "Cells with a result: 6; without: 6" in text and "digits: 6 cells (6 missing): bce, role" in text
    assert "| Hill |" in text and "| BoostLU + LL-R |" in text  # published-only rows of table1 on VOC
    assert "VLPL and AEVLP need the clip extra" in text  # the rows that need CLIP pseudo-labels are marked


def test_ablation_and_grid_tables(tmp_path: Path) -> None:
    variants = {"gr": {}, "no-k": {"use_k": False}, "no-v": {"use_v": False}}
    defaults = {"use_k": True, "use_v": True, "q2": 0.01, "q3": 1.0}  # records hold resolved hparams
    recs, means, abl_cells = [], {}, []
    for i, (name, hp) in enumerate(variants.items()):
        xs = [60.0 + i + 0.1 * s for s in SEEDS]
        means[name] = statistics.mean(xs)
        mine = [record("voc", "gr", s, x, {**defaults, **hp}) for s, x in zip(SEEDS, xs)]
        recs += mine
        abl_cells += [cell(r, group=name) for r in mine]
    grid, grid_cells = [], []
    for q2 in (0.001, 0.01):
        for q3 in (0.25, 0.5):
            r = record("voc", "gr", 0, 70 + q2 * 100 + q3, {**defaults, "q2": q2, "q3": q3})
            grid.append(r)
            grid_cells.append(cell(r, group="q2-q3", coords={"q2": q2, "q3": q3}))
    out = write_records(tmp_path / "res", recs + grid)
    write_run(out, abl_cells, run_id="ablation-gr-1", experiment="ablation-gr", datasets=["voc"])
    write_run(out, grid_cells, run_id="grid-gr-1", experiment="grid-gr", datasets=["voc"],
              updated="2026-02-01T00:00:00+00:00")
    abl_report = build_report(out, "ablation-gr")
    assert "fixes the training point (lr 0.0001 / batch 8) instead of selecting" in render_text(abl_report, "md")
    abl = pd.read_csv(io.StringIO(to_csv(abl_report)["ablation"]))
    for name in variants:
        row = abl[(abl["group"] == name) & (abl["dataset"] == "voc")].iloc[0]
        assert row["mean"] == pytest.approx(means[name]) and row["n"] == 3
        assert row["diff_vs_baseline"] == pytest.approx(means[name] - means["gr"])
    assert np.isnan(abl[(abl["group"] == "static") & (abl["dataset"] == "voc")]["mean"].iloc[0])
    rep = build_report(out)  # the latest run: grid-gr
    assert rep.title == "spmlbench report: grid-gr"
    grid_csv = pd.read_csv(io.StringIO(to_csv(rep)["grid_q2-q3_voc"]))
    hit = grid_csv[(grid_csv["q2"] == 0.01) & (grid_csv["q3"] == 0.5)].iloc[0]
    assert hit["mean"] == pytest.approx(70 + 1.0 + 0.5) and hit["n"] == 1
    assert grid_csv["mean"].notna().sum() == 4 and len(grid_csv) == 25  # only the cells its manifest lists


def test_runs_are_chosen_by_id_and_combined_without_mixing(tmp_path: Path) -> None:
    """Two runs of the same loss and seeds with other jobs (a preview) stay apart; a shared job appears once."""
    full = [record("digits", loss, s, 70.0 + s) for loss in ("an", "gr") for s in SEEDS]
    preview = [{**record("digits", "an", s, 50.0 + s), "epochs": 3, "job_id": f"{s:016x}"} for s in SEEDS]
    shared_gr = [r for r in full if r["loss"] == "gr"]
    out = write_records(tmp_path / "res", full + preview)
    write_run(out, [cell(r) for r in full], run_id="run-full")
    write_run(out, [cell(r) for r in preview + shared_gr], run_id="run-preview", updated="2026-03-01T00:00:00+00:00")
    latest = main_csv(build_report(out))
    assert latest.set_index("method").loc["an", "mean"] == pytest.approx(51.0)  # the latest run: the preview
    first = main_csv(build_report(out, run_ids=["run-full"]))
    assert first.set_index("method").loc["an", "mean"] == pytest.approx(71.0)
    both = main_csv(build_report(out, all_runs=True)).set_index("method")
    assert both.loc["an [run-full]", "mean"] == pytest.approx(71.0)
    assert both.loc["an [run-preview]", "mean"] == pytest.approx(51.0)
    assert both.loc["gr", "n"] == 3  # the same jobs in both runs: one row, each seed once
    with pytest.raises(Exception, match="--run nope: no such run"):
        build_report(out, run_ids=["nope"])


def test_reference_file_shape() -> None:
    from spmlbench.report.load import load_reference

    ref = load_reference()
    assert not ref.duplicated(["method", "dataset", "setting", "source"]).any()
    assert set(ref["dataset"]) == {"voc", "coco", "nuswide", "cub"}
    assert set(ref["setting"]) == {"e2e", "linear_init"}
    first = ref.drop_duplicates(["method", "dataset", "setting"])
    got = first[(first["setting"] == "e2e")].set_index(["method", "dataset"])["map"]
    assert got[("gr", "voc")] == 89.83 and got[("gr", "cub")] == 21.64
    assert got[("em_apl", "coco")] == 70.87 and got[("aevlp", "nuswide")] == 50.70


def test_cli_report_formats(results, cli, tmp_path: Path) -> None:
    out, vals = results
    res = cli("report", "--results", str(out), "--format", "md")
    assert res.code == 0, res.err
    assert "| GR Loss |" in res.out
    res = cli("report", "--results", str(out))
    assert res.code == 0 and "GR Loss" in res.out and "Provenance" in res.out
    dest = tmp_path / "rep"
    res = cli("report", "--results", str(out), "--format", "csv", "--out", str(dest))
    assert res.code == 0, res.err
    assert {"main.csv", "paired.csv"} <= {p.name for p in dest.iterdir()}
    res = cli("report", "--results", str(out), "--format", "latex", "--out", str(dest))
    assert res.code == 0 and "\\begin{tabular}" in (dest / "report.tex").read_text()


def test_cli_report_errors(cli, tmp_path: Path) -> None:
    res = cli("report", "--results", str(tmp_path / "empty"))
    assert res.code == 2 and "no result records" in res.err
    res = cli("report", "--results", str(tmp_path), "--format", "pdf")
    assert res.code == 2 and "pdf" in res.err
    res = cli("report", "--results", str(tmp_path), "--experiment", "nope")
    assert res.code == 2 and "table1" in res.err
    assert res.err.strip().splitlines()[-1:] == [res.err.strip()] and "Traceback" not in res.err  # one line


def test_records_without_a_manifest_are_shown_apart(tmp_path: Path) -> None:
    """Older folders (no run manifest): each (loss, hyperparameters, settings) is its own row, labelled by what
    differs; a newer preview never replaces a seed of another config."""
    recs = [record("voc", "em", s, 80.0 + s, {"alpha": 0.1}) for s in SEEDS]
    recs += [record("coco", "em", s, 60.0 + s, {"alpha": 0.01}) for s in SEEDS]
    short = record("voc", "em", 0, 10.0, {"alpha": 0.1})
    short.update(epochs=2, job_id="f" * 16, created="2026-02-01T00:00:00")  # newer, other settings
    df = main_csv(build_report(write_records(tmp_path / "res", [*recs, short])))
    em = df.set_index(["method", "dataset"])
    assert em.loc[("em (epochs=8)", "voc"), "n"] == 3 and em.loc[("em (epochs=8)", "voc"), "mean"] == pytest.approx(81.0)
    assert em.loc[("em (epochs=2)", "voc"), "mean"] == pytest.approx(10.0)
    assert em.loc[("em", "coco"), "n"] == 3 and em.loc[("em", "coco"), "mean"] == pytest.approx(61.0)


def test_unlisted_records_are_named_beside_a_run(tmp_path: Path) -> None:
    old = [record("digits", "gr", s, 70.0 + s, {"q2": 0.1}) for s in SEEDS]
    new = [record("digits", "gr", s, 86.0 + s, {"q2": 0.01}) for s in SEEDS]
    out = write_run(write_records(tmp_path / "res", old + new), [cell(r) for r in new])
    rep = build_report(out)
    assert main_csv(rep).set_index("method").loc["gr", "mean"] == pytest.approx(87.0)
    assert "3 records in" in render_text(rep, "md") and "--unlisted" in render_text(rep, "md")
    apart = main_csv(build_report(out, unlisted=True)).set_index("method")
    assert list(apart.index) == ["gr"] and apart.loc["gr", "mean"] == pytest.approx(71.0)


def test_reference_loss_picks_the_side_of_the_paired_test(tmp_path: Path) -> None:
    recs = [record("digits", loss, s, base + s) for loss, base in (("an", 72.0), ("gr", 86.0), ("role", 60.0))
            for s in SEEDS]
    out = write_run(write_records(tmp_path / "res", recs), [cell(r) for r in recs])
    paired = pd.read_csv(io.StringIO(to_csv(build_report(out))["paired"]))
    assert set(paired["reference"]) == {"gr"} and set(paired["other"]) == {"an", "role"}
    paired = pd.read_csv(io.StringIO(to_csv(build_report(out, reference_loss="role"))["paired"]))
    assert set(paired["reference"]) == {"role"}
    assert paired.set_index("other").loc["gr", "diff"] == pytest.approx(-26.0)
    with pytest.raises(Exception, match="--reference nope: not a row"):
        build_report(out, reference_loss="nope")
