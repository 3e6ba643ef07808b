"""The report's figure style: matplotlib on the Agg backend, ~3.5 in wide, 7 pt text, PNG at 300 dpi,
written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spmlbench.atomic import atomic_path  # noqa: E402

WIDTH_IN = 3.5
DPI = 300
RC = {"font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "legend.fontsize": 6,
      "xtick.labelsize": 6, "ytick.labelsize": 6, "lines.linewidth": 1.0}


def save_figure(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and close it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight")
    plt.close(fig)
    return path


def figure(height: float = 2.4, ncols: int = 1) -> tuple[Any, Any]:
    """A report-width figure and its (1, ncols) axes."""
    with plt.rc_context(RC):
        return plt.subplots(1, ncols, figsize=(WIDTH_IN, height), squeeze=False)
