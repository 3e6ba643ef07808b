"""The results chart: test mAP per method with its 95% interval over seeds, one panel per dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from spmlbench.report.figure_style import RC, WIDTH_IN, plt, save_figure
from spmlbench.report.tables import base_loss, dataset_label, order_datasets, row_label


def intervals(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (mode, dataset, row): n, mean test mAP and the t-based 95% interval of the mean (NaN under two seeds)."""
    out = []
    for (mode, ds, row), sub in runs.groupby(["mode", "dataset", "row"], sort=False):
        x = sub["test_map"].to_numpy(float)
        n, mean = len(x), float(np.mean(x))
        half = float(stats.t.ppf(0.975, n - 1) * np.std(x, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
        out.append({"mode": mode, "dataset": ds, "row": row, "n": n, "mean": mean, "low": mean - half,
                    "high": mean + half})
    return pd.DataFrame(out, columns=["mode", "dataset", "row", "n", "mean", "low", "high"])


def plot_results(runs: pd.DataFrame, reference: pd.DataFrame, settings: dict[str, Any], out: Path) -> list[Path]:
    """``results_<mode>.png``: each method's mean test mAP with its 95% interval, one panel per dataset, methods
    in the paper's order (the upper bound drawn apart, hollow)."""
    frame = intervals(runs)
    written = []
    upper = set(settings.get("upper_bound", []))
    pos = {m: i for i, m in enumerate(settings.get("order", []))}
    for mode, sub in frame.groupby("mode", sort=False):
        datasets = order_datasets(list(sub["dataset"]), settings)
        rows = sorted(dict.fromkeys(sub["row"]), key=lambda r: (base_loss(r) in upper, pos.get(base_loss(r), len(pos)), r))
        with plt.rc_context(RC):
            fig, axes = plt.subplots(1, len(datasets), figsize=(WIDTH_IN * max(1, len(datasets)) / 1.5,
                                                                 0.9 + 0.16 * len(rows)), squeeze=False, sharey=True)
            for ax, ds in zip(axes[0], datasets):
                part = sub[sub["dataset"] == ds].set_index("row")
                for y, row in enumerate(rows):
                    if row not in part.index:
                        continue
                    r = part.loc[row]
                    err = [[r["mean"] - r["low"]], [r["high"] - r["mean"]]] if r["n"] > 1 else None
                    hollow = base_loss(row) in upper
                    ax.errorbar(r["mean"], y, xerr=err, fmt="o", ms=3, capsize=2, color="C0",
                                mfc="white" if hollow else "C0")
                ax.set_title(dataset_label(ds, settings))
                ax.set_xlabel("test mAP (%)")
                ax.grid(axis="x", alpha=0.3)
            axes[0][0].set_yticks(range(len(rows)), [row_label(r, reference, settings) for r in rows])
            axes[0][0].invert_yaxis()
            fig.suptitle(f"mean over seeds with its 95% interval (t), mode {mode}")
        written.append(save_figure(fig, out / f"results_{mode}.png"))
    return written
