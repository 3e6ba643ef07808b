"""``spmlbench report``: tables, paired tests and figures from whatever result records exist."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from spmlbench.atomic import atomic_write_text, writable_dir
from spmlbench.cli.app import app, console, err_console
from spmlbench.cli.help import HELPERS, OUTPUT, PIPELINE, REPORT_FORMATS, SELECTION, choices
from spmlbench.errors import ConfigError
from spmlbench.paths import default_results_dir


@app.command(rich_help_panel=PIPELINE)
def report(
    experiment: Optional[str] = typer.Option(None, "--experiment", "-e", help="Report one experiment (table1, ablation-gr, grid-gr, figures or a .toml path).",
                                              rich_help_panel=SELECTION),
    fmt: str = typer.Option("console", "--format", "-f", help="output format", metavar=choices(REPORT_FORMATS),
                           rich_help_panel=OUTPUT),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write report files (and plots/) into this folder.",
                                       rich_help_panel=OUTPUT),
    plots: bool = typer.Option(False, "--plots", help="Also write the figures as PNG (into --out/plots, default ./report/plots).",
                               rich_help_panel=OUTPUT),
    results: Optional[Path] = typer.Option(None, "--results", help="Folder holding records/.", show_default="./results",
                                           rich_help_panel=SELECTION),
    grid_points: bool = typer.Option(False, "--grid-points", help="Also show every (lr, batch) grid point of the selection.",
                                     rich_help_panel=OUTPUT),
    run: list[str] = typer.Option([], "--run", help="Report this run (repeatable; 'spmlbench runs' lists them).",
                                  metavar="<run id>", show_default="the latest run", rich_help_panel=SELECTION),
    all_runs: bool = typer.Option(False, "--all-runs", help="Report every run in --results (of --experiment, if given).",
                                  rich_help_panel=SELECTION),
    unlisted: bool = typer.Option(False, "--unlisted", help="Report the records no run manifest lists (older runs), "
                                                            "each config apart.", rich_help_panel=SELECTION),
    reference_loss: Optional[str] = typer.Option(None, "--reference", help="The loss every paired comparison is made "
                                                 "against.", metavar="<loss>", show_default="gr, else the run's first loss",
                                                 rich_help_panel=SELECTION),
    plugin: list[str] = typer.Option([], "--plugin", help="Your own losses (a .py file or module): their titles and "
                                     "defaults.", metavar="<file.py|module>", rich_help_panel=SELECTION),
) -> None:
    """Turn runs into tables (mean ± std, published numbers, paired tests) and figures: each cell reads exactly the
    job its run's manifest lists."""
    from spmlbench.cli.parse import load_plugin_options
    from spmlbench.report import FORMATS, build_report
    from spmlbench.report.render import EXTENSIONS, render_text, to_console, to_csv

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: unknown format; choose one of: {', '.join(FORMATS)}")
    if out is not None:
        writable_dir(out, "--out")  # before the report is printed: a read-only or file --out fails first
    results_dir = results if results is not None else default_results_dir()
    plots_dir = None
    if plots:
        plots_dir = (out if out is not None else Path("report")) / "plots"
    if plugin:
        load_plugin_options(plugin)
    if unlisted and (run or all_runs):
        raise ConfigError("--unlisted: shows the records no run lists; drop --run/--all-runs or --unlisted")
    rep = build_report(results_dir, experiment, run_ids=run, all_runs=all_runs, unlisted=unlisted,
                       reference_loss=reference_loss, plots_dir=plots_dir, grid_points=grid_points)
    if out is not None and plots_dir is not None:
        rep.figures = [p.relative_to(out) for p in rep.figures]  # links in md/html relative to the report
    if fmt == "console":
        to_console(rep, console)
        if out is not None:
            for key, text in to_csv(rep).items():
                atomic_write_text(out / f"{key}.csv", text)
    elif fmt == "csv":
        files = to_csv(rep)
        if out is None:
            typer.echo(files.get("main", next(iter(files.values()), "")), nl=False)
        else:
            for key, text in files.items():
                atomic_write_text(out / f"{key}.csv", text)
    else:
        text = render_text(rep, fmt)
        if out is None:
            typer.echo(text, nl=False)
        else:
            atomic_write_text(out / f"report.{EXTENSIONS[fmt]}", text)
    if out is not None:
        console.print(f"report written to {out}", highlight=False)
    if plots_dir is not None:
        console.print(f"{len(rep.figures)} figures in {plots_dir}", highlight=False)
    for line in rep.warnings:
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command(rich_help_panel=HELPERS)
def runs(
    results: Optional[Path] = typer.Option(None, "--results", help="Folder holding runs/ and records/.",
                                           show_default="./results", rich_help_panel=SELECTION),
) -> None:
    """List the runs of a results folder: id, when, command, jobs finished / failed / missing."""
    from rich.table import Table

    from spmlbench.experiments.run_manifest import job_states, list_manifests

    results_dir = results if results is not None else default_results_dir()
    manifests = list_manifests(results_dir)
    if not manifests:
        console.print(f"no runs in {results_dir} (no {results_dir / 'runs'}/*.json); 'spmlbench run --out "
                      f"{results_dir}' makes one", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"Runs in {results_dir} (newest last; 'spmlbench report --run ID' shows one)")
    for col in ("run id", "updated", "status", "jobs ok", "failed", "missing", "command"):
        table.add_column(col, overflow="fold")
    for m in manifests:
        states = job_states(results_dir, m.get("trained") or m["jobs"])
        count = {s: sum(1 for v in states.values() if v == s) for s in ("ok", "failed", "missing")}
        table.add_row(m["run_id"], m["updated"], str(m.get("status", "")), str(count["ok"]), str(count["failed"]),
                      str(count["missing"]), m["command"])
    console.print(table)
