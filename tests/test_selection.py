"""The (lr, batch) selection of Cole et al.'s linear protocol: expansion, the pure selection rule
checked against an independent computation over records, the two-stage run, and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spmlbench.errors import ConfigError
from spmlbench.experiments.jobs import expand_jobs
from spmlbench.experiments.recipes import linear_protocol
from spmlbench.experiments.selection import first_stage, group_key, select, selected_jobs

META = {"protocol": {"label_seed": 1200, "split_seed": 1200}, "expected_positives": {"computed": 1.4}}


def _jobs(**kw):
    base = dict(dataset="voc", losses=["an", "gr"], seeds=[0, 1, 2], meta=META, backbone="resnet50")
    base.update(kw)
    return expand_jobs(**base)


def test_cole_protocol_is_the_default_linear_recipe() -> None:
    jobs = _jobs()
    assert len(jobs) == 2 * 8 * 3
    assert {(j.epochs, j.early_stop) for j in jobs} == {(25, "none")}
    assert {(j.lr, j.batch_size) for j in jobs} == {(lr, b) for lr in (1e-2, 1e-3, 1e-4, 1e-5) for b in (8, 16)}
    proto = linear_protocol()
    assert proto.select == "first-seed" and "Cole et al. 2021" in proto.source


def test_lr_or_batch_fixes_an_axis_and_grids_replace_it() -> None:
    assert {(j.lr, j.batch_size) for j in _jobs(lr=1e-3)} == {(1e-3, 8), (1e-3, 16)}
    assert {(j.lr, j.batch_size) for j in _jobs(lr=1e-3, batch_size=8)} == {(1e-3, 8)}
    pts = {(j.lr, j.batch_size) for j in _jobs(lr_grid=[0.5, 0.1], batch_grid=[4])}
    assert pts == {(0.5, 4), (0.1, 4)}


def test_paper_recipe_keeps_each_papers_budget() -> None:
    jobs = {j.loss: j for j in _jobs(recipe="paper", seeds=[0])}
    assert (jobs["gr"].epochs, jobs["gr"].early_stop, jobs["gr"].lr) == (8, "drop:2", 1e-4)
    assert (jobs["an"].epochs, jobs["an"].lr, jobs["an"].batch_size) == (25, 1e-4, 8)


@pytest.mark.parametrize("kw", [dict(recipe="paper", lr_grid=[1e-3]), dict(mode="e2e", batch_grid=[8]),
                                dict(recipe="bogus"), dict(lr_grid=[-1.0])])
def test_grid_options_are_checked(kw: dict) -> None:
    with pytest.raises(ConfigError):
        _jobs(**kw)


def _fake_records(rng: np.random.Generator, seeds: list[int], *, fail: float = 0.1) -> pd.DataFrame:
    rows = []
    for job in _jobs(seeds=seeds):
        ok = rng.random() > fail
        curve = [float(v) for v in rng.uniform(10, 90, size=4)] if ok else []
        row = job.to_dict()
        row.update(job_id=job.job_id, hparams=json.dumps(row["hparams"], sort_keys=True),
                   status="ok" if ok else "failed", val_map=curve, test_map=float(rng.uniform(10, 90)))
        rows.append(row)
    return pd.DataFrame(rows)


def _independent(df: pd.DataFrame, rule: str) -> set[str]:
    """The selected job ids, computed directly from the definition with a pandas pivot."""
    df = df.assign(best=[max(v) if s == "ok" and len(v) else -np.inf for s, v in zip(df["status"], df["val_map"])])
    chosen: set[str] = set()
    for loss, sub in df.groupby("loss"):
        table = sub.pivot_table(index=["lr", "batch_size"], columns="seed", values="best", aggfunc="first")
        table = table.sort_index()  # ties: the earlier (lr, batch) in ascending order
        if rule == "each-seed":
            for seed in table.columns:
                lr, b = table[seed].idxmax() if np.isfinite(table[seed]).any() else table.index[0]
                chosen |= set(sub[(sub["seed"] == seed) & (sub["lr"] == lr) & (sub["batch_size"] == b)]["job_id"])
            continue
        col = table.mean(axis=1) if rule == "mean" else table[min(table.columns)]
        lr, b = col.idxmax() if np.isfinite(col).any() else table.index[0]
        chosen |= set(sub[(sub["lr"] == lr) & (sub["batch_size"] == b)]["job_id"])
    return chosen


@pytest.mark.parametrize("rule", ["first-seed", "each-seed", "mean"])
def test_selection_equals_an_independent_computation(rule: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(5):
        df = _fake_records(rng, [0, 1, 2])
        sel = select(df, rule)
        assert set(sel.loc[sel["selected"], "job_id"]) == _independent(df, rule)
        per_loss = sel[sel["selected"]].groupby("loss").size()
        assert (per_loss == 3).all()  # one record per seed is reported


def test_first_seed_with_only_the_first_seeds_grid_and_other_seeds_at_the_point() -> None:
    rng = np.random.default_rng(3)
    df = _fake_records(rng, [0, 1, 2], fail=0.0)
    stage1 = df[df["seed"] == 0]
    winner = {loss: sub.loc[sub["val_map"].map(max).idxmax(), ["lr", "batch_size"]].tolist()
              for loss, sub in stage1.groupby("loss")}
    keep = df[[(s == 0) or [lr, b] == winner[loss] for loss, s, lr, b in
               zip(df["loss"], df["seed"], df["lr"], df["batch_size"])]]
    sel = select(keep, "first-seed")
    got = {(r["loss"], r["seed"]): (r["lr"], r["batch_size"]) for r in sel[sel["selected"]].to_dict("records")}
    assert got == {(loss, s): tuple(winner[loss]) for loss in winner for s in (0, 1, 2)}
    assert json.loads(sel["selection"].iloc[0])["seed"] == 0


def test_failed_points_are_never_chosen_over_finished_ones() -> None:
    df = _fake_records(np.random.default_rng(0), [0], fail=0.0)
    df = df[df["loss"] == "an"].copy()
    best = df["val_map"].map(max).idxmax()
    df.loc[best, "status"] = "failed"  # the best curve diverged at its last epoch: not selected
    sel = select(df, "first-seed")
    assert not sel.loc[best, "selected"] and sel["selected"].sum() == 1


def test_first_stage_runs_every_seed_of_one_point_groups() -> None:
    jobs = _jobs(seeds=[2, 0, 1])
    stage = first_stage(jobs, "first-seed")
    assert {j.seed for j in stage} == {0} and len(stage) == 16
    fixed = _jobs(seeds=[0, 1, 2], lr=1e-3, batch_size=8)
    assert first_stage(fixed, "first-seed") == fixed
    assert first_stage(jobs, "mean") == jobs


def test_group_key_is_the_same_for_a_job_and_its_record() -> None:
    job = _jobs(seeds=[0])[0]
    row = job.to_dict()
    row["hparams"] = json.dumps(row["hparams"])
    row.update(weights=None, image_size=float("nan"), exact=False, lr=0.5, seed=9, batch_size=3)
    assert group_key(row) == group_key(job.to_dict())
    other = _jobs(seeds=[0], epochs=3)[0]
    assert group_key(other.to_dict()) != group_key(job.to_dict())


def test_selected_jobs_keeps_unrun_seeds_at_the_chosen_point() -> None:
    jobs = _jobs(losses=["an"], seeds=[0, 1])
    rng = np.random.default_rng(1)
    recs = _fake_records(rng, [0], fail=0.0)
    recs = recs[recs["loss"] == "an"]
    keep = selected_jobs(jobs, recs, "first-seed")
    assert len(keep) == 2 and {j.seed for j in keep} == {0, 1} and len({(j.lr, j.batch_size) for j in keep}) == 1
    best = recs.loc[recs["val_map"].map(max).idxmax()]
    assert (keep[0].lr, keep[0].batch_size) == (best["lr"], best["batch_size"])


@pytest.mark.slow
def test_run_then_report_mark_and_show_the_selected_points(tmp_path: Path) -> None:
    """End to end on digits: seed 0 trains both points, seed 1 only the selected one; records carry
    ``selected`` equal to an independent computation; a re-run skips everything; the report shows the point."""
    from typer.testing import CliRunner

    from spmlbench.cli import app
    from spmlbench.experiments.records import load_records

    runner = CliRunner()
    home, out = tmp_path / "home", tmp_path / "out"
    args = ["run", "--home", str(home), "--out", str(out), "--losses", "an,gr", "--seeds", "0,1", "--epochs", "2",
            "--lr-grid", "1e-2,1e-4", "--batch-grid", "16", "--processes", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    df = load_records(out)
    assert len(df) == 2 * 2 + 2  # seed 0 at 2 points per loss, seed 1 at the selected one
    for loss, sub in df.groupby("loss"):
        s0 = sub[sub["seed"] == 0]
        win = s0.loc[s0["val_map"].map(lambda v: max(v) if len(v) else -math.inf).idxmax()]
        s1 = sub[sub["seed"] == 1].iloc[0]
        assert (s1["lr"], s1["batch_size"]) == (win["lr"], win["batch_size"])
        want = {win["job_id"], s1["job_id"]}
        assert set(sub.loc[sub["selected"].astype(bool), "job_id"]) == want
        assert json.loads(s1["selection"])["rule"] == "first-seed"
    an = df[(df["loss"] == "an") & df["selected"].astype(bool)].iloc[0]
    assert f"@{an['lr']:g}/16" in res.output and "@lr/batch: the point selected on val" in " ".join(res.output.split())
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "0 jobs run" in again.output, again.output
    rep = runner.invoke(app, ["report", "--results", str(out), "--grid-points", "--format", "md"])
    assert rep.exit_code == 0, rep.output
    assert "Selected training point" in rep.output and "Every (lr, batch) grid point" in rep.output
    gr = df[(df["loss"] == "gr") & df["selected"].astype(bool)].iloc[0]
    an = df[(df["loss"] == "an") & df["selected"].astype(bool)].iloc[0]
    table = rep.output.split("Selected training point", 1)[1]
    # rows in the main table's method order, with its labels
    assert table.index(f"| AN | {an['lr']:g} / 16 |") < table.index(f"| GR Loss | {gr['lr']:g} / 16 |")
