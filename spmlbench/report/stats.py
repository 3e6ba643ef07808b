"""Statistics over seeds: mean ± std per cell and paired comparisons over matched seeds."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

PAIR_KEYS = ["seed", "label_seed", "split_seed"]
PAIRED_COLUMNS = [
    "mode", "dataset", "reference", "other", "n", "seeds", "ref_mean", "other_mean",
    "diff", "p_value", "noise", "beyond_noise",
]


def summarise(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample std (n-1; NaN for one seed) and count of ``test_map`` per ``by`` group, with the seeds."""
    if runs.empty:
        return pd.DataFrame(columns=[*by, "n", "mean", "std", "seeds"])
    g = runs.groupby(by, sort=False, dropna=False)["test_map"]
    out = g.agg(n="count", mean="mean", std=lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else np.nan)
    out["seeds"] = runs.groupby(by, sort=False, dropna=False)["seed"].agg(lambda x: sorted(int(v) for v in x))
    return out.reset_index()


def paired_comparison(
    runs: pd.DataFrame, reference: str = "gr", noise: Callable[[str], float] = lambda ds: 0.5
) -> pd.DataFrame:
    """Compare ``reference`` (a row name) with every other row per (mode, dataset) over matched seeds.

    A seed pairs when seed, label_seed and split_seed agree. ``diff`` is mean(reference - other);
    ``p_value`` is scipy's paired t-test (NaN under two pairs); ``beyond_noise`` is
    ``|diff| > noise(dataset)``.
    """
    if runs.empty or reference not in set(runs["row"]):
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    keys = [k for k in PAIR_KEYS if k in runs.columns]
    out = []
    for (mode, dataset), sub in runs.groupby(["mode", "dataset"], sort=False):
        ref = sub[sub["row"] == reference][[*keys, "test_map"]]
        if ref.empty:
            continue
        for other in sub["row"].unique():
            if other == reference:
                continue
            oth = sub[sub["row"] == other][[*keys, "test_map"]]
            pair = ref.merge(oth, on=keys, suffixes=("_ref", "_oth")).sort_values("seed")
            a = pair["test_map_ref"].to_numpy(float)
            b = pair["test_map_oth"].to_numpy(float)
            n = len(pair)
            diff = float(np.mean(a - b)) if n else np.nan
            p = float(stats.ttest_rel(a, b).pvalue) if n >= 2 else np.nan
            thr = float(noise(dataset))
            out.append(
                {
                    "mode": mode, "dataset": dataset, "reference": reference, "other": other, "n": n,
                    "seeds": [int(s) for s in pair["seed"]],
                    "ref_mean": float(np.mean(a)) if n else np.nan,
                    "other_mean": float(np.mean(b)) if n else np.nan,
                    "diff": diff, "p_value": p, "noise": thr,
                    "beyond_noise": bool(abs(diff) > thr) if n else False,
                }
            )
    return pd.DataFrame(out, columns=PAIRED_COLUMNS)
