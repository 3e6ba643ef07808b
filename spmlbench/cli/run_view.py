"""What ``spmlbench run`` draws: progress (rich, on stderr), the result table and the summary lines."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.progress import Progress

import typer

from spmlbench.cli.app import console, err_console
from spmlbench.experiments.jobs import JobSpec
from spmlbench.experiments.runner import RunProgress, RunSummary
from spmlbench.train.configs import EpochProgress


class RichRunProgress(RunProgress):
    """Jobs done (one bar over every stage of the run: counts only go up), the current cohort's epoch and its best
    val mAP, drawn with rich on stderr. ``planned``: the jobs the whole run trains, when known up front."""

    def __init__(self, progress: Progress, planned: int | None = None) -> None:
        self.progress = progress
        self.planned = planned
        self.started = False
        self.jobs_task = progress.add_task("jobs", total=planned, start=False)
        self.epoch_task = progress.add_task("epoch", total=0, visible=False)

    def start(self, total: int, skipped: int) -> None:
        task = self.progress.tasks[self.jobs_task]
        done = task.completed + skipped if self.started else skipped
        if not self.started:
            self.progress.start_task(self.jobs_task)
            self.started = True
        want = max(self.planned or 0, done + total - skipped, int(task.total or 0))
        self.progress.update(self.jobs_task, total=want, completed=done)

    def cohort(self, jobs: Sequence[JobSpec]) -> None:
        losses = ",".join(dict.fromkeys(j.loss for j in jobs))
        self.progress.update(self.epoch_task, total=jobs[0].epochs, completed=0, visible=True,
                             description=f"{len(jobs)} configs ({losses})")

    def epoch(self, event: EpochProgress) -> None:
        best = "-" if math.isnan(event.best_val_map) else f"{event.best_val_map:.2f}"
        desc = self.progress.tasks[self.epoch_task].description.split(" | ")[0]
        self.progress.update(self.epoch_task, completed=event.epoch, description=f"{desc} | best val mAP {best}")

    def jobs_done(self, jobs: Sequence[JobSpec], results: Sequence[Any]) -> None:
        self.progress.advance(self.jobs_task, len(jobs))

    def waiting(self, count: int) -> None:
        self.progress.update(self.epoch_task, visible=True, description=f"waiting for {count} jobs run elsewhere")

    def remote(self, queued: int, running: int) -> None:
        self.progress.update(self.epoch_task, visible=True, description=f"ray: {queued} queued, {running} running")

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def held(self, holders: Sequence[Any]) -> None:
        if holders:
            more = f" (and {len(holders) - 1} more locks in {holders[0].path.parent})" if len(holders) > 1 else ""
            self.progress.console.print(f"waiting: {holders[0].describe()}{more}", markup=False, highlight=False,
                                        soft_wrap=True)


def _jobs(n: int, noun: str = "job") -> str:
    """``1 job``, ``2 jobs``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def report_run(summary: RunSummary, jobs: Sequence[JobSpec], out: Path, run_id: str,
               untrained: Mapping[str, Sequence[JobSpec]] | None = None, warnings: Sequence[str] = ()) -> None:
    """The summary lines, the run's table (:func:`spmlbench.report.run_summary.run_summary`; ``jobs``: the ones
    its cells report) and their failures.

    ``untrained``: selection groups in which no grid point trained (each stops with "nothing to select"; their
    failed points count among the failed jobs). ``warnings``: lines printed before the table (a class without
    a test positive).
    """
    from spmlbench.experiments.records import load_records
    from spmlbench.report.render import print_table
    from spmlbench.report.run_summary import run_summary

    df = load_records(out)  # read once for the messages and the table
    for line in warnings:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if summary.skipped:
        failed = int((df[df["job_id"].isin(summary.skipped)]["status"] != "ok").sum()) if not df.empty else 0
        note = f", {failed} of them failed (same seeds: a re-run fails the same way)" if failed else ""
        console.print(f"{_jobs(len(summary.skipped), 'finished job')} skipped{note} (records in {out / 'records'}); "
                      "use --force to re-run them", highlight=False)
    if summary.by_others:
        console.print(f"{_jobs(len(summary.by_others))} run by another process on {out}", highlight=False)
    console.print(f"{_jobs(len(summary.ran))} run; records in {out / 'records'}", highlight=False)
    print_table(run_summary(out, run_id), console)
    lost = {j.job_id for group in (untrained or {}).values() for j in group}
    for group in (untrained or {}).values():
        ran = int(df["job_id"].isin({j.job_id for j in group}).sum()) if not df.empty else 0
        console.print(f"{group[0].loss} on {group[0].dataset}: no grid point trained; nothing to select ({ran} "
                      f"grid point runs failed; their records say why)", markup=False, highlight=False)
    shown = {j.job_id for j in jobs} | (set(df["job_id"]) & lost if not df.empty else set())
    unselected = [f for f in summary.failed if f not in shown]
    if unselected:
        console.print(f"{len(unselected)} grid points failed and were not selected (e.g. diverged at a large lr); "
                      "their records say why", highlight=False)
    for _, row in df[df["job_id"].isin([f for f in summary.failed if f in shown])].iterrows():
        console.print(f"failed: {row['loss']} seed {row['seed']} ({row['job_id']}): {row['error']}",
                      markup=False, highlight=False)
    failed = int((df[df["job_id"].isin(shown)]["status"] != "ok").sum()) if not df.empty else 0
    if failed:  # every other job ran; the exit status tells a script or CI that the results are incomplete
        err_console.print(f"error: {failed} of {len(shown)} jobs failed; their errors are in the 'error' column of "
                          f"their records in {out / 'records'} (listed above for jobs run now); a re-run skips them: "
                          "delete those records, or pass --force to re-run every job", markup=False, highlight=False,
                          soft_wrap=True)
        raise typer.Exit(1)
