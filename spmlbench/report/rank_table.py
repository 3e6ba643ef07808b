"""The table of average ranks across datasets (and datasets x seeds), with Friedman and Nemenyi notes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from spmlbench.report.ranks import RankTest, complete_methods, dataset_scores, rank_test, seed_scores
from spmlbench.report.tables import MISSING, Cell, Table, base_loss, dataset_label, fmt_p, order_datasets, row_label

DATASETS = "datasets"
SEEDS = "datasets x seeds"


@dataclasses.dataclass
class RankSummary:
    """Both rank designs of one mode and the methods left out of them."""

    mode: str
    by_dataset: RankTest
    by_seed: RankTest
    left_out: list[str]
    upper: list[str]


def rank_summary(runs: pd.DataFrame, settings: dict[str, Any], *, mode: str, datasets: Sequence[str],
                 rows: Sequence[str]) -> RankSummary | None:
    """Ranks of the measured ``rows`` (upper-bound rows excluded) over ``datasets``; None under two methods."""
    if runs.empty:
        return None
    datasets = [d for d in order_datasets(datasets, settings) if d in set(runs["dataset"])]
    sub = runs[runs["dataset"].isin(datasets)]
    upper = set(settings.get("upper_bound", []))
    measured = [r for r in dict.fromkeys(rows) if r in set(sub["row"])]
    ranked = [r for r in measured if base_loss(r) not in upper]
    keep, left_out = complete_methods(sub, ranked)
    if len(keep) < 2:
        return None
    return RankSummary(mode, rank_test(dataset_scores(sub, keep, datasets), DATASETS),
                       rank_test(seed_scores(sub, keep, datasets), SEEDS), left_out,
                       [r for r in measured if base_loss(r) in upper])


def _test_note(t: RankTest, what: str) -> str:
    k = len(t.mean_ranks)
    if not t.testable:
        return (f"Friedman over {what}: not testable ({t.n_blocks} block{'s' if t.n_blocks != 1 else ''}, "
                f"{k} methods; needs ≥ 2 blocks and ≥ 3 methods).")
    return (f"Friedman over {what} (N = {t.n_blocks} blocks, k = {k} methods): χ² = {t.chi2:.2f}, "
            f"p = {fmt_p(t.p_value)}; Nemenyi critical difference (α = 0.05) = {t.cd:.2f} rank.")


def _p_vs_best(t: RankTest, method: str) -> float:
    if not t.testable or method == t.mean_ranks.index[0]:
        return math.nan
    return float(t.nemenyi.loc[t.mean_ranks.index[0], method])


def _p_cell(t: RankTest, method: str, p: float) -> Cell:
    if t.testable and method == t.mean_ranks.index[0]:
        return Cell("best")
    return Cell(fmt_p(p))


def rank_table(summary: RankSummary, reference: pd.DataFrame, settings: dict[str, Any]) -> Table:
    """Methods sorted by average rank over datasets: the rank on each dataset, both average ranks and the
    Nemenyi p-value against the top-ranked method of each design."""
    d, s = summary.by_dataset, summary.by_seed
    datasets = list(d.ranks.index)
    header = ["Method", *[f"rank {dataset_label(ds, settings)}" for ds in datasets], "avg rank (datasets)",
              "avg rank (datasets × seeds)", "Nemenyi p vs best (datasets)", "Nemenyi p vs best (ds × seeds)"]
    order = sorted(d.mean_ranks.index, key=lambda m: (d.mean_ranks[m], s.mean_ranks.get(m, np.inf)))
    rows, data = [], []
    for m in order:
        label = row_label(m, reference, settings)
        per_ds = [float(d.ranks.loc[ds, m]) for ds in datasets]
        p_d, p_s = _p_vs_best(d, m), _p_vs_best(s, m)
        rows.append([Cell(label), *[Cell(f"{r:g}") for r in per_ds],
                     Cell(f"{d.mean_ranks[m]:.2f}", bold=math.isclose(d.mean_ranks[m], d.mean_ranks.iloc[0])),
                     Cell(f"{s.mean_ranks[m]:.2f}" if s.n_blocks else MISSING,
                          bold=bool(s.n_blocks) and math.isclose(s.mean_ranks[m], s.mean_ranks.iloc[0])),
                     _p_cell(d, m, p_d), _p_cell(s, m, p_s)])
        data.append({"method": m, "label": label, "mode": summary.mode,
                     **{f"rank_{ds}": r for ds, r in zip(datasets, per_ds)},
                     "avg_rank_datasets": float(d.mean_ranks[m]), "n_datasets": d.n_blocks,
                     "avg_rank_seeds": float(s.mean_ranks[m]) if s.n_blocks else np.nan, "n_seed_blocks": s.n_blocks,
                     "nemenyi_p_vs_best_datasets": p_d, "nemenyi_p_vs_best_seeds": p_s,
                     "friedman_chi2_datasets": d.chi2, "friedman_p_datasets": d.p_value, "cd_datasets": d.cd,
                     "friedman_chi2_seeds": s.chi2, "friedman_p_seeds": s.p_value, "cd_seeds": s.cd})
    notes = [
        "Ranks within a block, 1 = highest test mAP, ties share the average rank; a dataset block ranks the mean "
        "over seeds, a datasets × seeds block one matched seed (seed, label_seed, split_seed) on one dataset.",
        _test_note(d, "datasets"),
        _test_note(s, "datasets × seeds"),
        "Seeds of one dataset are not independent samples of the method's performance: the datasets × seeds test "
        "overstates N; the datasets design is the one of Demšar (2006). Nemenyi p from the studentized range (k, ∞).",
    ]
    if summary.upper:
        notes.append("Not ranked (upper bound): " + ", ".join(row_label(m, reference, settings) for m in summary.upper) + ".")
    if summary.left_out:
        notes.append("Not ranked (no result on every dataset): "
                     + ", ".join(row_label(m, reference, settings) for m in summary.left_out) + ".")
    title = f"Average rank across datasets, mode {summary.mode} (Friedman, Nemenyi)"
    return Table("ranks", title, header, rows, notes, pd.DataFrame(data))
