"""Assemble a report from result records (and optionally an experiment spec): tables, plots, provenance."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from spmlbench.errors import DataError
from spmlbench.experiments.spec import Experiment, load_experiment
from spmlbench.report import tables as T
from spmlbench.report.load import load_reference, load_results, match_experiment, runs_without_experiment
from spmlbench.report.provenance import provenance, provenance_lines
from spmlbench.report.rank_table import rank_summary, rank_table
from spmlbench.report.render import Report
from spmlbench.report.stats import paired_comparison

REFERENCE_LOSS = "gr"


def report_settings(exp: Experiment | None) -> dict[str, Any]:
    """Display settings: table1's ``[report]`` (row order, labels, noise) overlaid by the experiment's own."""
    base = dict(load_experiment("table1").report)
    if exp is not None:
        base.update(exp.report)
    return base


def _noise(settings: dict[str, Any]):
    noise = settings.get("seed_noise", {})
    return lambda ds: float(noise.get(ds, noise.get("default", 0.5)))


def _main_tables(runs: pd.DataFrame, reference: pd.DataFrame, settings: dict[str, Any], *, modes: list[str],
                 datasets: dict[str, list[str]], rows: dict[str, list[str]], expected_seeds: int | None) -> list[T.Table]:
    out = []
    for mode in modes:
        sub = runs[runs["mode"] == mode] if not runs.empty else runs
        table = T.main_table(sub, reference, settings, mode=mode, datasets=datasets[mode], rows=rows[mode],
                             expected_seeds=expected_seeds)
        table.notes += T.caveats(mode, datasets[mode], rows[mode])
        if len(modes) > 1:
            table.key = f"main_{mode}"
        out.append(table)
        paired = paired_comparison(sub, REFERENCE_LOSS, _noise(settings),
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


def build_tables(records: pd.DataFrame, exp: Experiment | None, reference: pd.DataFrame,
                 settings: dict[str, Any]) -> tuple[list[T.Table], pd.DataFrame, pd.DataFrame]:
    """The report's tables, the runs they use and the missing cells."""
    if exp is None:
        runs, missing = runs_without_experiment(records[records["selected"]] if "selected" in records else records)
        if runs.empty:
            return [], runs, missing
        modes = list(dict.fromkeys(runs["mode"]))
        datasets = {m: list(dict.fromkeys(runs.loc[runs["mode"] == m, "dataset"])) for m in modes}
        rows = {m: list(dict.fromkeys(runs.loc[runs["mode"] == m, "row"])) for m in modes}
        return _main_tables(runs, reference, settings, modes=modes, datasets=datasets, rows=rows,
                            expected_seeds=None), runs, missing
    runs, missing = match_experiment(records, exp)
    out: list[T.Table] = []
    plain = [g for g in exp.groups if not g.axes]
    baseline = next((g.name for g in exp.groups if g.baseline), None)
    if plain and baseline is not None:
        out.append(T.ablation_table(runs, plain, baseline, exp.datasets, settings))
    elif plain:
        names = {g.name for g in plain}
        sub = runs[runs["group"].isin(names)] if not runs.empty else runs
        rows = list(dict.fromkeys(loss for g in plain for loss in g.losses))
        out += _main_tables(sub, reference, settings, modes=[exp.mode], datasets={exp.mode: list(exp.datasets)},
                            rows={exp.mode: rows}, expected_seeds=len(exp.seeds))
    for g in exp.groups:
        if g.axes:
            for ds in exp.group_datasets(g):
                out.append(T.grid_table(runs, g, ds, settings))
    return out, runs, missing


def _selection_tables(
    every: pd.DataFrame, runs: pd.DataFrame, grid_points: bool, reference: pd.DataFrame, settings: dict[str, Any]
) -> list[T.Table]:
    """The selected points (and with ``grid_points`` every point) of the groups the report's runs belong to."""
    from spmlbench.report.selection_tables import grid_points_table, selected_points_table

    if every.empty or runs.empty:
        return []
    if "selected" in runs:  # a cell at an experiment's fixed point selected nothing
        runs = runs[runs["selected"].astype(bool)]
    mine = every[every["group"].isin(set(every.loc[every["job_id"].isin(set(runs["job_id"])), "group"]))]
    tables = [selected_points_table(mine, reference, settings)] + ([grid_points_table(mine)] if grid_points else [])
    return [t for t in tables if t is not None]


def build_report(
    results_dir: str | os.PathLike[str],
    experiment: str | None = None,
    *,
    plots_dir: str | os.PathLike[str] | None = None,
    home: str | os.PathLike[str] | None = None,
    grid_points: bool = False,
) -> Report:
    """Build the report for ``results_dir`` (records), optionally narrowed to an experiment; plots when
    ``plots_dir``. Tables use the selected (lr, batch) point of each loss and dataset; ``grid_points``
    adds a table of every grid point."""
    results_dir = Path(results_dir)
    exp = load_experiment(experiment) if experiment else None
    every = load_results(results_dir)
    records = every[every["selected"]] if not every.empty else every
    if exp is not None and not every.empty:
        # optional datasets (the digits preview) join the report when they have records
        extra = [d for d in exp.optional_datasets if d in set(every["dataset"]) and d not in exp.datasets]
        if extra:
            exp = load_experiment(experiment, datasets=[*exp.datasets, *extra])
    if records.empty and exp is None:
        raise DataError(f"{results_dir}: no result records found; run 'spmlbench run' first or pass --results DIR")
    reference = load_reference()
    settings = report_settings(exp)
    tables, runs, missing = build_tables(every, exp, reference, settings)
    tables += _selection_tables(every, runs, grid_points, reference, settings)
    title = f"spmlbench report: {exp.name}" if exp else "spmlbench report"
    desc = exp.description if exp else "All result records."
    report = Report(title, desc, tables, provenance_lines(provenance(every, runs, missing, str(results_dir))))
    if plots_dir is not None:
        from spmlbench.report.plots import make_plots

        figures, notes = make_plots(Path(plots_dir), results_dir=results_dir, records=records, runs=runs,
                                    experiment=exp, settings=settings, home=home)
        report.figures, report.figure_notes = figures, notes
    return report
