"""Report tables: the main methods x datasets table with published numbers, paired, ablation, grid.

Each builder returns a format-neutral :class:`Table` (text cells with a bold flag, notes, and
the tidy numbers behind it in ``data`` for CSV); ``render.py`` turns it into console, Markdown,
LaTeX, CSV or HTML. Missing cells are ``—`` (never zero); published-only rows show ``n/a``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from spmlbench.report.stats import summarise
from spmlbench.modes import LINEAR

MISSING = "—"
NOT_RUN = "n/a"
PARTIAL = "†"


@dataclasses.dataclass
class Cell:
    """One table cell: display text and whether it is marked best."""

    text: str
    bold: bool = False


@dataclasses.dataclass
class Table:
    """A titled table with notes under it and its numbers in tidy form (``data``)."""

    key: str
    title: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = dataclasses.field(default_factory=list)
    data: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def fmt(value: float | None, std: float | None = None, digits: int = 2) -> str:
    """``mean ± std`` (std omitted when NaN/None); ``—`` for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ± {std:.{digits}f}"


def fmt_diff(value: float | None) -> str:
    """Signed difference with two decimals; ``—`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    return f"{value:+.2f}"


def setting_for_mode(mode: str) -> str:
    """The published setting a mode compares against: linear-init -> linear_init, else e2e."""
    return "linear_init" if mode == "linear-init" else "e2e"


def dataset_label(ds: str, settings: dict[str, Any]) -> str:
    """Display name of a dataset (``[report] dataset_labels``), else the name."""
    return str(settings.get("dataset_labels", {}).get(ds, ds))


def order_datasets(datasets: Sequence[str], settings: dict[str, Any]) -> list[str]:
    """Datasets in the paper's column order, then any others in given order."""
    known = list(settings.get("dataset_labels", {}))
    uniq = list(dict.fromkeys(datasets))
    return [d for d in known if d in uniq] + [d for d in uniq if d not in known]


def _reads_pseudo_labels(loss: str) -> bool:
    """Whether a registered loss reads a CLIP pseudo-label cache (the clip extra); False for an unknown name."""
    from spmlbench.losses import LOSSES

    return loss in LOSSES and bool(LOSSES.get(loss).pseudo)


def base_loss(row: str) -> str:
    """The loss name of a row label (``gr (q3=1.5)`` -> ``gr``)."""
    return row.split(" ", 1)[0]


def row_label(row: str, reference: pd.DataFrame, settings: dict[str, Any]) -> str:
    """Printed label of a row: ``[report] labels``, else the published label, else the title the run recorded
    (a plugin's ``register_loss(title=...)``), else the name."""
    base = base_loss(row)
    labels = settings.get("labels", {})
    titles = settings.get("titles", {})
    if base in labels:
        label = str(labels[base])
    elif base in titles and reference[reference["method"] == base].empty:
        label = str(titles[base])
    else:
        ref = reference[reference["method"] == base]
        label = str(ref["label"].iloc[0]) if not ref.empty else base
    return label + row[len(base):]


def published(reference: pd.DataFrame, method: str, dataset: str, setting: str) -> dict[str, Any] | None:
    """The first published row for (method, dataset, setting) in file order, or None."""
    ref = reference[(reference["method"] == method) & (reference["dataset"] == dataset) & (reference["setting"] == setting)]
    return None if ref.empty else ref.iloc[0].to_dict()


def main_table(
    runs: pd.DataFrame,
    reference: pd.DataFrame,
    settings: dict[str, Any],
    *,
    mode: str,
    datasets: Sequence[str],
    rows: Sequence[str],
    expected_seeds: int | None = None,
) -> Table:
    """Methods x datasets: measured mean ± std, published number and difference per dataset.

    ``rows`` are the measured/expected row names; published-only methods from ``reference``
    with a number on one of ``datasets`` are added (``n/a`` measured). Best per dataset (highest
    mean, upper-bound rows excluded) is bold.
    """
    datasets = order_datasets(datasets, settings)
    setting = setting_for_mode(mode)
    summ = summarise(runs, ["row", "dataset"]) if not runs.empty else summarise(runs, ["row", "dataset"])
    stat = {(r["row"], r["dataset"]): r for r in summ.to_dict("records")}
    order = list(settings.get("order", []))
    measured_rows = list(dict.fromkeys(rows))
    in_ref = reference[(reference["setting"] == setting) & reference["dataset"].isin(datasets)]["method"]
    pub_only = [m for m in dict.fromkeys(in_ref) if m not in {base_loss(r) for r in measured_rows}]
    pos = {m: i for i, m in enumerate(order)}
    all_rows = sorted(
        [(r, False) for r in measured_rows] + [(m, True) for m in pub_only],
        key=lambda t: (pos.get(base_loss(t[0]), len(pos)), t[0]),
    )
    upper = set(settings.get("upper_bound", []))
    best: dict[str, float] = {}
    for ds in datasets:
        means = [stat[(r, ds)]["mean"] for r, only in all_rows
                 if not only and base_loss(r) not in upper and (r, ds) in stat]
        if means:
            best[ds] = max(means)
    with_pub = set(reference.loc[reference["setting"] == setting, "dataset"])  # no published column elsewhere
    header = ["Method"]
    for ds in datasets:
        name = dataset_label(ds, settings)
        header += [name, f"{name} pub.", "Δ"] if ds in with_pub else [name]
    table_rows, data = [], []
    partial = False
    for row, only in all_rows:
        cells = [Cell(row_label(row, reference, settings))]
        for ds in datasets:
            pub = published(reference, base_loss(row), ds, setting) if row == base_loss(row) else None
            pub_text = fmt(pub["map"], pub["std"]) if pub else MISSING
            st = stat.get((row, ds))
            if only:
                cells += [Cell(NOT_RUN), Cell(pub_text), Cell(MISSING)] if ds in with_pub else [Cell(NOT_RUN)]
                continue
            mean = float(st["mean"]) if st is not None else np.nan
            std = float(st["std"]) if st is not None else np.nan
            n = int(st["n"]) if st is not None else 0
            text = fmt(mean if n else None, std)
            if n and expected_seeds and n < expected_seeds:
                text += PARTIAL
                partial = True
            is_best = bool(n) and ds in best and base_loss(row) not in upper and math.isclose(mean, best[ds])
            diff = mean - pub["map"] if (pub and n) else np.nan
            cells += [Cell(text, bold=is_best)] + ([Cell(pub_text), Cell(fmt_diff(diff))] if ds in with_pub else [])
            data.append(
                {
                    "method": row, "label": cells[0].text, "dataset": ds, "mode": mode, "n": n,
                    "mean": mean if n else np.nan, "std": std, "published": pub["map"] if pub else np.nan,
                    "published_std": pub["std"] if pub else np.nan,
                    "published_source": pub["source"] if pub else "", "diff": diff, "best": is_best,
                }
            )
        table_rows.append(cells)
    notes = []
    if partial:
        notes.append(f"{PARTIAL} fewer seeds than the experiment asks for ({expected_seeds}).")
    clip = [m.upper() for m in dict.fromkeys(base_loss(r) for r, _ in all_rows) if _reads_pseudo_labels(m)]
    if clip:
        notes.append(f"{' and '.join(clip)} need the clip extra and a CLIP pseudo-label cache ('spmlbench "
                     "pseudo-labels DATASET --source vlpl|damp'); their pseudo-labels are seeded here (the released "
                     "AEVLP code's are not: an unseeded random GCN and fresh flips every step).")
    return Table(
        key="main",
        title=f"Test mAP (%) by method and dataset, mode {mode}"
        + (f" (published: {setting})" if with_pub & set(datasets) else ""),
        header=header,
        rows=table_rows,
        notes=notes,
        data=pd.DataFrame(data),
    )


def caveats(mode: str, datasets: Sequence[str], rows: Sequence[str]) -> list[str]:
    """The caveats printed under the main table, for this mode, these datasets and rows."""
    bases = {base_loss(r) for r in rows}
    out = [
        "mean ± sample std (n−1) over seeds; — = no result for this cell (never zero); n/a = published only; "
        "bold = best per column (full-label BCE is an upper bound and is not ranked); Δ = measured − published.",
        "Published numbers: ResNet-50, 448 px, end-to-end fine-tuning unless noted; each number's source is in "
        "spmlbench/data_manifests/reference_results.csv.",
    ]
    if mode == LINEAR:
        out.append(
            "These runs are linear probes on frozen features, the published numbers end-to-end fine-tuning: "
            "compare rankings and gaps, not absolute levels."
        )
    elif mode == "linear-init":
        out.append("LinearInit rows compare against the papers' LinearInit numbers where published.")
    out.append(
        "Seed noise: published seed std is 0.1–0.5 on VOC/COCO/NUS and up to 1.8 on CUB; a gap under ~0.5 "
        "(CUB ~1) is within seed noise."
    )
    if bases & {"epr", "role"}:
        out.append("EPR and ROLE use the oracle expected number of positives per image (docs/protocol.md, section 7).")
    if "nuswide" in datasets:
        out.append(
            "NUS-WIDE subsets differ between papers (Cole's re-crawl vs the official list used by Zhou et al. "
            "and Xing et al.)."
        )
    if "gr" in bases:
        out.append("The official GR code sets no seed: the published GR numbers are unseeded single runs.")
    if "ll_cp" in bases:
        out.append("The official LL-Cp code actually ran LL-Ct; the suite runs LL-Cp as described in the paper.")
    return out


def fmt_p(p: float | None) -> str:
    """A p-value with three significant digits (``<0.001`` below that); ``—`` when missing."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3g}"


def paired_table(paired: pd.DataFrame, reference: pd.DataFrame, settings: dict[str, Any]) -> Table:
    """The paired comparison of the reference loss against every other row, per dataset, largest Δ first."""
    ref = paired["reference"].iloc[0] if not paired.empty else "gr"
    ref_label = row_label(ref, reference, settings)
    header = ["Dataset", "Other", "n", ref_label, "Other mean", f"Δ ({ref_label} − other)", "95% CI",
              "p (paired t)", "p (Holm)", "band", f"verdict ({ref_label} vs other)"]
    rows = []
    for r in paired.to_dict("records"):
        ci = MISSING if math.isnan(r["ci_low"]) else f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]"
        decided = r["verdict"] in ("better", "worse")
        rows.append(
            [
                Cell(dataset_label(r["dataset"], settings)),
                Cell(row_label(r["other"], reference, settings)),
                Cell(str(r["n"])),
                Cell(fmt(r["ref_mean"])),
                Cell(fmt(r["other_mean"])),
                Cell(fmt_diff(r["diff"])),
                Cell(ci),
                Cell(fmt_p(r["p_value"])),
                Cell(fmt_p(r["p_holm"]), bold=bool(r["significant"])),
                Cell(f"{r['noise']:.2f}"),
                Cell(r["verdict"], bold=decided),
            ]
        )
    m = int(paired["p_value"].notna().sum()) if not paired.empty else 0
    notes = [
        f"Paired over matched seeds (same seed, label_seed, split_seed): Δ = mean of the per-seed differences "
        f"{ref} − other, rows sorted by Δ within each dataset; 95% CI = Δ ± t(0.975, n−1) · sd/√n; "
        "p from the paired t-test (— under two pairs).",
        f"p (Holm): Holm–Bonferroni adjustment over the {m} comparisons of this table (bold: < 0.05).",
        "Verdict (first line of evidence, the test): better / worse = Holm p < 0.05 and |Δ| > band; "
        "'(within band)' = significant but |Δ| ≤ band; 'unclear' = |Δ| > band but not significant; "
        "'no clear difference' = neither. Few seeds give the test little power: 'no clear difference' is not "
        "evidence of equality.",
        "Band (second line of evidence, not a test): the published seed-noise band, docs/published-results.md "
        "(seed std 0.1–0.5 on VOC/COCO/NUS-WIDE and up to 1.8 on CUB in Zhou et al. 2022: a gap under ~0.5, "
        "CUB ~1, is within seed noise); datasets without a published band use the default 0.5.",
    ]
    return Table("paired", f"Paired comparison: {ref_label} against every other loss", header, rows, notes,
                 paired.copy())


def ablation_table(runs: pd.DataFrame, groups: Sequence[Any], baseline: str, datasets: Sequence[str],
                   settings: dict[str, Any]) -> Table:
    """Rows = ablation groups, columns = datasets: mean ± std and the difference to the baseline group."""
    datasets = order_datasets(datasets, settings)
    summ = summarise(runs, ["group", "dataset"])
    stat = {(r["group"], r["dataset"]): r for r in summ.to_dict("records")}
    header = ["Variant", "Description"]
    for ds in datasets:
        header += [dataset_label(ds, settings), "Δ"]
    rows, data = [], []
    for g in groups:
        cells = [Cell(g.name), Cell(g.description)]
        for ds in datasets:
            st, base = stat.get((g.name, ds)), stat.get((baseline, ds))
            mean = float(st["mean"]) if st is not None else np.nan
            std = float(st["std"]) if st is not None else np.nan
            diff = mean - float(base["mean"]) if (st is not None and base is not None) else np.nan
            cells += [Cell(fmt(None if st is None else mean, std)), Cell(MISSING if g.name == baseline else fmt_diff(diff))]
            data.append({"group": g.name, "dataset": ds, "n": int(st["n"]) if st is not None else 0,
                         "mean": mean, "std": std, "diff_vs_baseline": diff})
        rows.append(cells)
    notes = [f"Δ = variant − {baseline} (mean over seeds); — = no result."]
    return Table("ablation", "Ablation: one component switched at a time", header, rows, notes, pd.DataFrame(data))


def grid_frame(runs: pd.DataFrame, group: Any, dataset: str) -> pd.DataFrame:
    """Mean/std/n per grid point of ``group`` on ``dataset`` (columns: axis names, n, mean, std)."""
    names = [a.name for a in group.axes]
    sub = runs[(runs["group"] == group.name) & (runs["dataset"] == dataset)] if not runs.empty else runs
    points = [c for c, _ in group.points()]
    rows = []
    for coords in points:
        vals = []
        if not sub.empty:
            mask = sub["coords"].map(lambda c: all(c.get(k) == v for k, v in coords.items()))
            vals = sub.loc[mask, "test_map"].to_list()
        rows.append({**coords, "n": len(vals), "mean": float(np.mean(vals)) if vals else np.nan,
                     "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else np.nan})
    return pd.DataFrame(rows, columns=[*names, "n", "mean", "std"])


def grid_table(runs: pd.DataFrame, group: Any, dataset: str, settings: dict[str, Any]) -> Table:
    """A grid group on one dataset: rows = all axes but the last, columns = the last axis; best bold."""
    frame = grid_frame(runs, group, dataset)
    names = [a.name for a in group.axes]
    row_axes, col_axis = names[:-1], names[-1]
    col_values = list(group.axes[-1].values)
    best = frame["mean"].max() if frame["mean"].notna().any() else np.nan
    header = [" / ".join(row_axes) + f" \\ {col_axis}" if row_axes else col_axis] + [str(v) for v in col_values]
    rows = []
    row_keys = list(dict.fromkeys(tuple(r[a] for a in row_axes) for r in frame.to_dict("records")))
    for key in row_keys:
        cells = [Cell(", ".join(str(k) for k in key) if key else "mAP")]
        for v in col_values:
            sel = frame
            for a, kv in zip(row_axes, key):
                sel = sel[sel[a] == kv]
            sel = sel[sel[col_axis] == v]
            r = sel.iloc[0]
            mean = r["mean"]
            cells.append(Cell(fmt(None if math.isnan(mean) else mean, r["std"]),
                              bold=bool(not math.isnan(mean) and math.isclose(mean, best))))
        rows.append(cells)
    title = f"Grid {group.name} on {dataset_label(dataset, settings)}: test mAP (%)"
    data = frame.assign(group=group.name, dataset=dataset)
    return Table(f"grid_{group.name}_{dataset}", title, header, rows, [group.description] if group.description else [], data)
