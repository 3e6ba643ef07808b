"""Comparison across datasets (Demšar 2006): average ranks, the Friedman test and the Nemenyi post-hoc.

A *block* is one unit every method is scored on: a dataset (mean over seeds), or a
(dataset, seed) pair. Ranks are taken within a block, 1 = highest test mAP, ties share the
average rank. Only methods with a score in every block of a design enter it.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
from scipy import stats

from spmlbench.report.stats import ALPHA, PAIR_KEYS


@dataclasses.dataclass
class RankTest:
    """Average ranks over the blocks of one design, with the Friedman test and Nemenyi p-values.

    ``chi2``/``p_value``/``cd`` are NaN and ``nemenyi`` empty when the design is not testable
    (fewer than two blocks or three methods).
    """

    design: str
    ranks: pd.DataFrame  # blocks x methods
    mean_ranks: pd.Series  # per method, ascending (best first)
    chi2: float
    p_value: float
    cd: float
    nemenyi: pd.DataFrame

    @property
    def n_blocks(self) -> int:
        """Number of blocks (N)."""
        return len(self.ranks)

    @property
    def testable(self) -> bool:
        """Whether the Friedman test and Nemenyi post-hoc were run."""
        return not math.isnan(self.chi2)


def block_ranks(scores: pd.DataFrame) -> pd.DataFrame:
    """Ranks within each row (block) of ``scores`` (blocks x methods): 1 = highest, ties averaged."""
    values = scores.to_numpy(float)
    ranked = np.vstack([stats.rankdata(-row) for row in values]) if len(values) else values
    return pd.DataFrame(ranked, index=scores.index, columns=scores.columns)


def friedman(ranks: pd.DataFrame) -> tuple[float, float]:
    """Friedman χ² (with the tie correction) and its p-value from within-block ranks (N x k).

    χ² = (12 / (N k (k+1)) · Σ_j R_j² − 3 N (k+1)) / (1 − Σ_blocks Σ_ties (t³ − t) / (N k (k² − 1))),
    R_j the rank sum of method j; p from χ² with k − 1 degrees of freedom.
    """
    n, k = ranks.shape
    r = ranks.to_numpy(float)
    sums = r.sum(axis=0)
    ties = sum(float(np.sum(c ** 3 - c)) for row in r for c in [np.unique(row, return_counts=True)[1].astype(float)])
    corr = 1.0 - ties / (n * k * (k * k - 1))
    chi2 = (12.0 / (n * k * (k + 1)) * float(np.sum(sums ** 2)) - 3.0 * n * (k + 1)) / corr
    return float(chi2), float(stats.chi2.sf(chi2, k - 1))


def nemenyi(mean_ranks: pd.Series, n_blocks: int) -> pd.DataFrame:
    """Nemenyi p-values for every pair of methods from their average ranks over ``n_blocks`` blocks.

    q = |R_i − R_j| / sqrt(k (k+1) / (6 N)); p = P(Q_{k,∞} > q · sqrt 2), Q the studentized range.
    """
    k = len(mean_ranks)
    r = mean_ranks.to_numpy(float)
    q = np.abs(r[:, None] - r[None, :]) / math.sqrt(k * (k + 1) / (6.0 * n_blocks))
    p = stats.studentized_range.sf(q * math.sqrt(2), k, np.inf)
    np.fill_diagonal(p, 1.0)
    return pd.DataFrame(np.minimum(p, 1.0), index=mean_ranks.index, columns=mean_ranks.index)


def critical_difference(k: int, n_blocks: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of average ranks: q_α · sqrt(k (k+1) / (6 N)), q_α = Q_{1−α,k,∞} / sqrt 2."""
    q_alpha = float(stats.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q_alpha * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def rank_test(scores: pd.DataFrame, design: str, alpha: float = ALPHA) -> RankTest:
    """Average ranks of ``scores`` (blocks x methods, complete), Friedman and Nemenyi when testable."""
    ranks = block_ranks(scores)
    mean = ranks.mean(axis=0).sort_values(kind="stable")
    n, k = ranks.shape
    if n < 2 or k < 3:
        return RankTest(design, ranks, mean, math.nan, math.nan, math.nan, pd.DataFrame())
    chi2, p = friedman(ranks)
    return RankTest(design, ranks, mean, chi2, p, critical_difference(k, n, alpha), nemenyi(mean, n))


def complete_methods(runs: pd.DataFrame, methods: list[str]) -> tuple[list[str], list[str]]:
    """Of ``methods``, those with a result on every dataset of ``runs``, and those left out."""
    datasets = set(runs["dataset"])
    have = runs.groupby("row")["dataset"].agg(lambda s: set(s) == datasets)
    keep = [m for m in methods if bool(have.get(m, False))]
    return keep, [m for m in methods if m not in keep]


def dataset_scores(runs: pd.DataFrame, methods: list[str], datasets: list[str]) -> pd.DataFrame:
    """Mean test mAP over seeds: datasets (rows, in order) x methods."""
    sub = runs[runs["row"].isin(methods)]
    table = sub.pivot_table(index="dataset", columns="row", values="test_map", aggfunc="mean")
    return table.reindex(index=[d for d in datasets if d in table.index], columns=methods)


def seed_scores(runs: pd.DataFrame, methods: list[str], datasets: list[str]) -> pd.DataFrame:
    """Test mAP per (dataset, seed) block x method, keeping only blocks every method has."""
    keys = ["dataset", *[k for k in PAIR_KEYS if k in runs.columns]]
    sub = runs[runs["row"].isin(methods)]
    table = sub.pivot_table(index=keys, columns="row", values="test_map", aggfunc="mean").reindex(columns=methods)
    table = table.dropna(axis=0, how="any")
    order = {d: i for i, d in enumerate(datasets)}
    pos = [order.get(ix[0], len(order)) for ix in table.index]
    return table.iloc[np.argsort(pos, kind="stable")]
