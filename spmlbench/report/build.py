"""Assemble a report from run manifests joined to their records: tables, plots, provenance."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from spmlbench.errors import ConfigError, DataError
from spmlbench.experiments.run_manifest import list_manifests
from spmlbench.experiments.spec import Experiment, load_experiment
from spmlbench.report import tables as T
from spmlbench.report.load import (
    RunTables,
    choose_runs,
    combine_runs,
    experiment_of,
    load_reference,
    load_runs,
    unlisted_records,
)
from spmlbench.report.provenance import provenance, provenance_lines
from spmlbench.report.rank_table import rank_summary, rank_table
from spmlbench.report.render import Report
from spmlbench.report.stats import paired_comparison
from spmlbench.report.unlisted import unlisted_runs

REFERENCE_LOSS = "gr"


def report_settings(exp: Experiment | None) -> dict[str, Any]:
    """Display settings: table1's ``[report]`` (row order, labels, noise) overlaid by the experiment's own."""
    base = dict(load_experiment("table1").report)
    if exp is not None:
        base.update(exp.report)
    return base


def seed_noise(settings: dict[str, Any]) -> Any:
    """The seed-noise band of a dataset (``[report] seed_noise``; default 0.5 mAP points), as a function."""
    noise = settings.get("seed_noise", {})
    return lambda ds: float(noise.get(ds, noise.get("default", 0.5)))


def _main_tables(runs: pd.DataFrame, reference: pd.DataFrame, settings: dict[str, Any], *, modes: list[str],
                 datasets: dict[str, list[str]], rows: dict[str, list[str]], expected_seeds: int | None,
                 ref_row: str | None) -> list[T.Table]:
    out = []
    for mode in modes:
        sub = runs[runs["mode"] == mode] if not runs.empty else runs
        table = T.main_table(sub, reference, settings, mode=mode, datasets=datasets[mode], rows=rows[mode],
                             expected_seeds=expected_seeds)
        table.notes += T.caveats(mode, datasets[mode], rows[mode])
        if len(modes) > 1:
            table.key = f"main_{mode}"
        out.append(table)
        paired = paired_comparison(sub, ref_row or REFERENCE_LOSS, seed_noise(settings),
                                   order=T.order_datasets(datasets[mode], settings))
        if not paired.empty:
            pt = T.paired_table(paired, reference, settings)
            if len(modes) > 1:
                pt.key, pt.title = f"paired_{mode}", f"{pt.title} ({mode})"
            out.append(pt)
        ranks = rank_summary(sub, settings, mode=mode, datasets=datasets[mode], rows=rows[mode])
        if ranks is not None:
            rt = rank_table(ranks, reference, settings)
            if len(modes) > 1:
                rt.key = f"ranks_{mode}"
            out.append(rt)
    return out


def reference_row(runs: pd.DataFrame, wanted: str | None) -> str | None:
    """The row every paired comparison is made against: ``wanted`` (a loss or row of the report; ConfigError when
    absent), else ``gr`` where present, else the first row of the run."""
    rows = list(dict.fromkeys(runs["row"])) if not runs.empty else []
    if wanted is not None:
        if wanted not in rows:
            raise ConfigError(f"--reference {wanted}: not a row of this report; choose from {', '.join(rows) or '(none)'}")
        return wanted
    if not rows:
        return None
    return REFERENCE_LOSS if REFERENCE_LOSS in rows else rows[0]


def _seeds(manifests: list[dict[str, Any]]) -> int | None:
    seeds = {c["seed"] for m in manifests for c in m["cells"]}
    return len(seeds) or None


def build_tables(data: RunTables | None, runs: pd.DataFrame, exp: Experiment | None, reference: pd.DataFrame,
                 settings: dict[str, Any], reference_loss: str | None = None) -> list[T.Table]:
    """The report's tables from the runs' cells (``runs``: one row per ok cell)."""
    if runs.empty:
        return []
    ref_row = reference_row(runs, reference_loss)
    expected = _seeds(data.manifests) if data is not None else None
    if exp is None:
        modes = list(dict.fromkeys(runs["mode"]))
        datasets = {m: list(dict.fromkeys(runs.loc[runs["mode"] == m, "dataset"])) for m in modes}
        rows = {m: list(dict.fromkeys(runs.loc[runs["mode"] == m, "row"])) for m in modes}
        return _main_tables(runs, reference, settings, modes=modes, datasets=datasets, rows=rows,
                            expected_seeds=expected, ref_row=ref_row)
    out: list[T.Table] = []
    plain = [g for g in exp.groups if not g.axes]
    baseline = next((g.name for g in exp.groups if g.baseline), None)
    if plain and baseline is not None:
        out.append(T.ablation_table(runs, plain, baseline, exp.datasets, settings))
    elif plain:
        names = {g.name for g in plain}
        sub = runs[runs["group"].isin(names)]
        rows = list(dict.fromkeys(loss for g in plain for loss in g.losses))
        out += _main_tables(sub, reference, settings, modes=[exp.mode], datasets={exp.mode: list(exp.datasets)},
                            rows={exp.mode: rows}, expected_seeds=len(exp.seeds), ref_row=ref_row)
    for g in exp.groups:
        if g.axes:
            for ds in exp.group_datasets(g):
                out.append(T.grid_table(runs, g, ds, settings))
    fixed = sorted({(g.overrides["lr"], g.overrides["batch_size"]) for g in exp.groups
                    if "lr" in g.overrides and "batch_size" in g.overrides})
    if fixed:
        points = ", ".join(f"lr {lr:g} / batch {b}" for lr, b in fixed)
        for t in out:
            t.notes.append(f"Experiment {exp.name} fixes the training point ({points}) instead of selecting (lr, batch) "
                           "on val: its numbers are not comparable with a selected run's (e.g. table1's).")
    return out


def _selection_tables(grid: pd.DataFrame, grid_points: bool, reference: pd.DataFrame,
                      settings: dict[str, Any]) -> list[T.Table]:
    """The selected points (and with ``grid_points`` every point) of the cells that selected among several."""
    from spmlbench.report.selection_tables import grid_points_table, selected_points_table

    if grid.empty:
        return []
    tables = [selected_points_table(grid, reference, settings)] + ([grid_points_table(grid)] if grid_points else [])
    return [t for t in tables if t is not None]


def with_titles(settings: dict[str, Any], manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Display settings with the registry titles the runs recorded (a plugin's title) under the [report] labels."""
    titles: dict[str, str] = {}
    for m in manifests:
        titles.update(m.get("titles") or {})
    return {**settings, "titles": titles}


def empty_class_warnings(runs: pd.DataFrame, where: str) -> list[str]:
    """A warning per dataset of the report's runs with a class that has AP 0 in every record (no test positive),
    stating the AP policy (:func:`spmlbench.data.label_checks.empty_class_warning`)."""
    from spmlbench.data.label_checks import empty_class_warning, zero_ap_classes

    if runs.empty or "test_ap" not in runs:
        return []
    found = (empty_class_warning(f"{where}/records ({ds})", zero_ap_classes(g["test_ap"]), [])
             for ds, g in runs.groupby("dataset"))
    return [w for w in found if w]


def build_report(
    results_dir: str | os.PathLike[str],
    experiment: str | None = None,
    *,
    run_ids: list[str] | tuple[str, ...] = (),
    all_runs: bool = False,
    unlisted: bool = False,
    reference_loss: str | None = None,
    plots_dir: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    grid_points: bool = False,
) -> Report:
    """The report of runs in ``results_dir``: the latest run by default, ``run_ids``, every run (``all_runs``) or
    the latest of ``experiment``; each cell reads exactly the job its run's manifest lists. Records that no
    manifest lists are shown apart with ``unlisted`` (or when the folder has no manifest at all). Plots when
    ``plots_dir``; ``grid_points`` adds a table of every (lr, batch) point; ``reference_loss`` is the side of
    every paired comparison (default: gr, else the run's first loss)."""
    results_dir = Path(results_dir)
    where = str(results_dir)
    manifests = list_manifests(results_dir)
    chosen = [] if unlisted else choose_runs(manifests, run_ids, all_runs, experiment, where)
    listed = {jid for m in manifests for jid in m["jobs"]}
    data: RunTables | None = None
    exp: Experiment | None = None
    if chosen:
        data = load_runs(results_dir, chosen)
        runs, missing, grid = combine_runs(data.runs), data.missing, data.grid
        blocks = {json.dumps(m.get("experiment") and [m["experiment"]["name"], m["experiment"]["sha256"]])
                  for m in chosen}
        exp = experiment_of(chosen[0]) if len(blocks) == 1 else None
    else:
        records = unlisted_records(results_dir, listed)
        if records.empty:
            raise DataError(f"{results_dir}: no result records found; run 'spmlbench run' first or pass --results DIR")
        runs, missing = unlisted_runs(records)
        grid = pd.DataFrame()
    reference = load_reference()
    settings = with_titles(report_settings(exp), chosen)
    tables = build_tables(data, runs, exp, reference, settings, reference_loss)
    tables += _selection_tables(grid, grid_points, reference, settings)
    n_unlisted = 0 if not chosen else int(len(unlisted_records(results_dir, listed)))
    title = f"spmlbench report: {exp.name}" if exp else "spmlbench report"
    desc = exp.description if exp else ("Records without a run manifest." if not chosen else "")
    prov = provenance(runs, missing, where, chosen, n_unlisted)
    report = Report(title, desc, tables, provenance_lines(prov), warnings=empty_class_warnings(runs, where))
    if plots_dir is not None:
        from spmlbench.report.plots import make_plots

        figures, notes = make_plots(Path(plots_dir), results_dir=results_dir, runs=runs,
                                    experiment=exp, settings=settings, home=home)
        report.figures, report.figure_notes = figures, notes
    return report
