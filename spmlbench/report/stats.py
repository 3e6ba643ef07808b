"""Statistics over seeds: mean ± std per cell and paired comparisons over matched seeds.

A paired comparison reports the mean of the per-seed differences with a t-based 95% confidence
interval, the paired t-test p-value, the Holm-adjusted p-value over the family of comparisons
(one table) and a verdict that reads both the test and the published seed-noise band.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
PAIR_KEYS = ["seed", "label_seed", "split_seed"]
PAIRED_COLUMNS = [
    "mode", "dataset", "reference", "other", "n", "seeds", "ref_mean", "other_mean",
    "diff", "ci_low", "ci_high", "p_value", "p_holm", "significant", "noise", "beyond_noise", "verdict",
]
VERDICTS = ("better", "worse", "better (within band)", "worse (within band)", "unclear (|Δ| > band)",
            "no clear difference", "too few seeds")


def summarise(runs: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean, sample std (n-1; NaN for one seed) and count of ``test_map`` per ``by`` group, with the seeds."""
    if runs.empty:
        return pd.DataFrame(columns=[*by, "n", "mean", "std", "seeds"])
    g = runs.groupby(by, sort=False, dropna=False)["test_map"]
    out = g.agg(n="count", mean="mean", std=lambda x: float(np.std(x, ddof=1)) if len(x) > 1 else np.nan)
    out["seeds"] = runs.groupby(by, sort=False, dropna=False)["seed"].agg(lambda x: sorted(int(v) for v in x))
    return out.reset_index()


def paired_stats(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Mean of ``a - b``, its t-based ``level`` confidence interval and the two-sided paired t-test p.

    With n pairs: se = sd(a - b, n-1) / sqrt(n), CI = mean ± t_{(1+level)/2, n-1} · se,
    t = mean / se, p = 2 · P(T_{n-1} > |t|). Under two pairs CI and p are NaN; when every
    difference is equal (se = 0), the CI is that value and p is 0 (or 1 when it is 0).
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    n = len(d)
    nan = float("nan")
    if n == 0:
        return {"diff": nan, "ci_low": nan, "ci_high": nan, "p_value": nan}
    diff = float(np.mean(d))
    if n < 2:
        return {"diff": diff, "ci_low": nan, "ci_high": nan, "p_value": nan}
    se = float(np.std(d, ddof=1)) / np.sqrt(n)
    if se == 0.0:
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "p_value": 1.0 if diff == 0 else 0.0}
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(diff / se), n - 1))
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "p_value": p}


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values (same order); NaN entries stay NaN and are not counted in the family.

    Sorted ascending p_(1) ≤ … ≤ p_(m): adjusted p_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)).
    """
    p = np.asarray(p_values, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def verdict(diff: float, p_holm: float, band: float, n: int, alpha: float = ALPHA) -> str:
    """The reading of one comparison: the Holm-adjusted test first, the seed-noise band second.

    better/worse: Holm p < alpha and |diff| > band; "(within band)": significant but |diff| ≤ band;
    "unclear": |diff| > band without significance; "no clear difference": neither; under two
    pairs: "too few seeds".
    """
    if n < 2 or np.isnan(p_holm):
        return "too few seeds"
    side = "better" if diff > 0 else "worse"
    beyond = abs(diff) > band
    if p_holm < alpha:
        return side if beyond else f"{side} (within band)"
    return "unclear (|Δ| > band)" if beyond else "no clear difference"


def paired_comparison(
    runs: pd.DataFrame, reference: str = "gr", noise: Callable[[str], float] = lambda ds: 0.5,
    alpha: float = ALPHA, order: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Compare ``reference`` (a row name) with every other row per (mode, dataset) over matched seeds.

    A seed pairs when seed, label_seed and split_seed agree. ``diff`` is mean(reference − other)
    with its 95% CI (:func:`paired_stats`); ``p_holm`` adjusts ``p_value`` over every comparison
    returned (one table = one family); ``beyond_noise`` is ``|diff| > noise(dataset)``. Rows are
    grouped by (mode, dataset), datasets in ``order`` (then input order), largest ``diff`` first within each.
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
            thr = float(noise(dataset))
            st = paired_stats(a, b)
            out.append(
                {
                    "mode": mode, "dataset": dataset, "reference": reference, "other": other, "n": n,
                    "seeds": [int(s) for s in pair["seed"]],
                    "ref_mean": float(np.mean(a)) if n else np.nan,
                    "other_mean": float(np.mean(b)) if n else np.nan,
                    **st, "noise": thr, "beyond_noise": bool(abs(st["diff"]) > thr) if n else False,
                }
            )
    frame = pd.DataFrame(out, columns=[c for c in PAIRED_COLUMNS if c not in ("p_holm", "significant", "verdict")])
    if frame.empty:
        return pd.DataFrame(columns=PAIRED_COLUMNS)
    frame["p_holm"] = holm(frame["p_value"].to_numpy(float))
    frame["significant"] = frame["p_holm"] < alpha
    frame["verdict"] = [verdict(r.diff, r.p_holm, r.noise, r.n, alpha) for r in frame.itertuples()]
    modes = {m: i for i, m in enumerate(dict.fromkeys(frame["mode"]))}
    known = list(order or [])
    datasets = {d: i for i, d in enumerate([*known, *[d for d in dict.fromkeys(frame["dataset"]) if d not in known]])}
    frame["_block"] = [(modes[m], datasets[d]) for m, d in zip(frame["mode"], frame["dataset"])]
    frame = frame.sort_values(["_block", "diff"], ascending=[True, False], kind="stable", na_position="last")
    return frame.drop(columns="_block").reset_index(drop=True)[PAIRED_COLUMNS]
