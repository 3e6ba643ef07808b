"""Critical-difference diagrams (Demšar 2006) drawn with scikit-posthocs from the report's rank tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from spmlbench.report.figure_style import RC as _RC
from spmlbench.report.figure_style import WIDTH_IN, plt
from spmlbench.report.figure_style import save_figure as _save
from spmlbench.report.rank_table import DATASETS, rank_summary
from spmlbench.report.ranks import RankTest
from spmlbench.report.tables import row_label

FILE_TAG = {DATASETS: "datasets", "datasets x seeds": "seeds"}


HIGHLIGHT = {"GR Loss": "#c0392b"}  # the suite's reference loss stands out; every other method in dark grey


def plot_cd(test: RankTest, labels: dict[str, str], path: Path, *, title: str) -> Path:
    """One CD diagram: average ranks on the axis (1 = best, left), a bar joining methods the Nemenyi test
    does not separate at α = 0.05, and a bar of the critical difference's length above the axis."""
    import scikit_posthocs as sp

    ranks = test.mean_ranks.rename(index=labels)
    sig = test.nemenyi.rename(index=labels, columns=labels)
    k = len(ranks)
    width = WIDTH_IN if k <= 6 else 2 * WIDTH_IN
    colors = {m: HIGHLIGHT.get(m, "0.2") for m in ranks.index}
    with plt.rc_context({**_RC, "font.size": 6}):
        fig, ax = plt.subplots(figsize=(width, 2.0))
        sp.critical_difference_diagram(
            ranks, sig, ax=ax, label_fmt_left="{label} ({rank:.2f})", label_fmt_right="({rank:.2f}) {label}",
            label_props={"fontsize": 6}, marker_props={"s": 10}, elbow_props={"linewidth": 0.6},
            crossbar_props={"linewidth": 1.8, "solid_capstyle": "butt"}, color_palette=colors, text_h_margin=0.1,
        )
        ax.set_xlim(0.8, k + 0.2)
        ax.set_xticks(range(1, k + 1))
        ax.tick_params(axis="x", labelsize=6, length=3, pad=1)
        start = 1.0
        ax.plot([start, start + test.cd], [2.0, 2.0], color="k", linewidth=1.0)
        for x in (start, start + test.cd):
            ax.plot([x, x], [1.75, 2.25], color="k", linewidth=1.0)
        ax.text(start + test.cd + 0.1, 2.0, f"CD = {test.cd:.2f}", va="center", ha="left", fontsize=6)
        low = ax.get_ylim()[0]
        ax.set_ylim(low, 2.6)
        fig.set_size_inches(width, 0.45 + 0.13 * (2.6 - low))
        ax.set_title(title, fontsize=7, pad=4)
    return _save(fig, path)


def _ranked_runs(runs: pd.DataFrame, experiment: Any) -> pd.DataFrame:
    """The runs the report's rank tables use: all, or an experiment's plain groups (none for an ablation)."""
    if experiment is None or runs.empty:
        return runs
    plain = [g.name for g in experiment.groups if not g.axes]
    if any(g.baseline for g in experiment.groups) or "group" not in runs:
        return runs.iloc[0:0]
    return runs[runs["group"].isin(plain)]


def cd_figures(out: Path, runs: pd.DataFrame, settings: dict[str, Any], notes: list[str],
               experiment: Any = None) -> list[Path]:
    """CD diagrams for every mode and rank design that is testable; a note for those that are not."""
    from spmlbench.report.load import load_reference

    runs = _ranked_runs(runs, experiment)
    if runs.empty or not {"row", "mode"} <= set(runs.columns):
        return []
    reference = load_reference()
    written = []
    for mode, sub in runs.groupby("mode", sort=False):
        summary = rank_summary(sub, settings, mode=str(mode), datasets=list(dict.fromkeys(sub["dataset"])),
                               rows=list(dict.fromkeys(sub["row"])))
        if summary is None:
            notes.append(f"critical-difference diagram ({mode}): skipped (fewer than two methods to rank)")
            continue
        for test in (summary.by_dataset, summary.by_seed):
            if not test.testable:
                notes.append(f"critical-difference diagram ({mode}, over {test.design}): skipped "
                             f"({test.n_blocks} block(s), {len(test.mean_ranks)} methods; needs ≥ 2 blocks and "
                             "≥ 3 methods)")
                continue
            labels = {m: row_label(m, reference, settings) for m in test.mean_ranks.index}
            blocks = f"{test.n_blocks} datasets" if test.design == DATASETS else f"{test.n_blocks} dataset × seed blocks"
            title = f"Average rank (1 = best) over {blocks}, mode {mode}: Friedman p = {test.p_value:.2g}, Nemenyi α = 0.05"
            written.append(plot_cd(test, labels, out / f"cd_{FILE_TAG[test.design]}_{mode}.png", title=title))
    return written
