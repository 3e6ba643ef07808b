"""Reports: tables (main, paired, ablation, grid), statistics, plots and renderers over result records."""

from __future__ import annotations

from spmlbench.report.build import build_report
from spmlbench.report.render import FORMATS, Report

__all__ = ["FORMATS", "Report", "build_report"]
