"""The table ``spmlbench run`` prints when it ends: one run's cells, in words a reader knows.

Rows are the methods with their paper names (the clean-label upper bound set apart, last), columns the
datasets (mean ± std over seeds at the selected (lr, batch), the best per dataset in bold) and one compact
column: whether each method differs from the reference loss (paired t-test over matched seeds, Holm-adjusted,
read against the seed-noise band, as in the report's paired table).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
import pandas as pd

from spmlbench.experiments.run_manifest import manifest_path, read_manifest
from spmlbench.report.build import reference_row, report_settings, seed_noise, with_titles
from spmlbench.report.load import experiment_of, load_reference, load_runs
from spmlbench.report.stats import paired_comparison, summarise
from spmlbench.report.tables import MISSING, Cell, Table, base_loss, dataset_label, fmt, order_datasets, row_label

MARKS = {"better": "▼", "worse": "▲", "better (within band)": "▽", "worse (within band)": "△",
         "unclear (|Δ| > band)": "≈", "no clear difference": "≈", "too few seeds": "?"}


def _points(grid: pd.DataFrame) -> dict[tuple[str, str], str]:
    """`` @lr/batch`` of the point each (row, dataset) selected, where it selected among several."""
    out: dict[tuple[str, str], str] = {}
    if grid.empty:
        return out
    for (row, ds), sub in grid[grid["selected"]].groupby(["row", "dataset"], sort=False):
        pts = sorted({(float(a), int(b)) for a, b in zip(sub["lr"], sub["batch_size"])})
        out[(str(row), str(ds))] = " @per seed" if len(pts) > 1 else f" @{pts[0][0]:g}/{pts[0][1]}"
    return out


def run_summary(out_dir: str | os.PathLike[str], run_id: str) -> Table:
    """The summary table of run ``run_id`` in ``out_dir`` (see the module docstring)."""
    manifest = read_manifest(manifest_path(out_dir, run_id))
    data = load_runs(Path(out_dir), [manifest])
    settings = with_titles(report_settings(experiment_of(manifest)), [manifest])
    reference = load_reference()
    runs = data.runs
    rows = list(dict.fromkeys(c["row"] for c in manifest["cells"]))
    datasets = order_datasets([c["dataset"] for c in manifest["cells"]], settings)
    upper = set(settings.get("upper_bound", []))
    pos = {m: i for i, m in enumerate(settings.get("order", []))}
    rows.sort(key=lambda r: (base_loss(r) in upper, pos.get(base_loss(r), len(pos))))
    stat = {(r["row"], r["dataset"]): r for r in summarise(runs, ["row", "dataset"]).to_dict("records")} \
        if not runs.empty else {}
    ref = reference_row(runs, None) if not runs.empty else None
    marks: dict[tuple[str, str], str] = {}
    if ref is not None:
        paired = paired_comparison(runs, ref, seed_noise(settings), order=datasets)
        marks = {(r["other"], r["dataset"]): MARKS.get(r["verdict"], "?") for r in paired.to_dict("records")}
    best = {}
    for ds in datasets:
        means = [stat[(r, ds)]["mean"] for r in rows if (r, ds) in stat and base_loss(r) not in upper]
        if means:
            best[ds] = max(means)
    lost_by: dict[tuple[str, str], str] = {}  # (row, dataset) -> "1 failed, 2 not run"
    if not data.missing.empty:
        for (row, ds), sub in data.missing.groupby(["loss", "dataset"], sort=False):
            counts = sub["status"].replace({"missing": "not run"}).value_counts(sort=False)
            lost_by[(str(row), str(ds))] = ", ".join(f"{n} {status}" for status, n in counts.items())
    points = _points(data.grid)
    ref_label = row_label(ref, reference, settings) if ref else ""
    header = ["Method", *(dataset_label(ds, settings) for ds in datasets)] + ([f"vs {ref_label}"] if ref else [])
    table_rows: list[list[Cell]] = []
    for row in rows:
        label = row_label(row, reference, settings) + (" (upper bound)" if base_loss(row) in upper else "")
        cells = [Cell(label)]
        for ds in datasets:
            st = stat.get((row, ds))
            lost = lost_by.get((row, ds), "")
            if st is None:
                cells.append(Cell(MISSING + (f" ({lost})" if lost else "")))
                continue
            mean = float(st["mean"])
            text = fmt(mean, float(st["std"])) + points.get((row, ds), "")
            if lost:
                text += f" ({lost})"
            is_best = ds in best and base_loss(row) not in upper and math.isclose(mean, best[ds])
            cells.append(Cell(text, bold=is_best))
        if ref:
            cells.append(Cell("ref." if row == ref else " ".join(marks.get((row, ds), "·") for ds in datasets)))
        table_rows.append(cells)
    notes = [f"mean ± std over seeds of run {run_id}" + ("; @lr/batch: the point selected on val" if points else "")
             + "; bold: best per dataset (the upper bound is not ranked)."]
    if ref:
        notes.append(f"vs {ref_label} (one mark per dataset): ▲/▼ above/below it (paired t-test over matched seeds, "
                     "Holm p < 0.05, gap beyond the seed-noise band); △/▽ significant but within the band; ≈ no clear "
                     "difference; ? fewer than two seeds. 'spmlbench report' shows the full tables.")
    return Table("run", f"Test mAP (%) at the best val epoch, run {run_id}", header, table_rows, notes, runs)

