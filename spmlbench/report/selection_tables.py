"""Report tables of the (lr, batch) selection: the selected point per loss and dataset, and the whole grid.

Both read the records of every point of the cells that selected among several
(:func:`spmlbench.report.load.load_runs`: columns ``row``, ``group`` (the cell's selection group), ``score``,
``selected`` (the job its run selected), ``selection``); groups with a single point are left out.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from spmlbench.report.tables import MISSING, Cell, Table, base_loss, dataset_label, fmt, order_datasets, row_label


def _grid_groups(records: pd.DataFrame) -> pd.DataFrame:
    """Records of groups that selected among several points."""
    if records.empty or "selection" not in records.columns:
        return records.iloc[0:0]
    points = records.groupby("group")[["lr", "batch_size"]].apply(lambda g: len(set(zip(g["lr"], g["batch_size"]))))
    multi = set(points[points > 1].index)
    return records[records["group"].isin(multi)]


def _point_text(sub: pd.DataFrame) -> str:
    pts = sorted({(float(a), int(b)) for a, b in zip(sub["lr"], sub["batch_size"])})
    if len(pts) > 1:  # each-seed: one point per seed
        return "; ".join(f"s{int(s)}: {a:g}/{int(b)}" for s, a, b in
                         sorted(zip(sub["seed"], sub["lr"], sub["batch_size"])))
    return f"{pts[0][0]:g} / {pts[0][1]}"


def selected_points_table(
    records: pd.DataFrame, reference: pd.DataFrame | None = None, settings: dict[str, Any] | None = None
) -> Table | None:
    """lr / batch selected on val per loss (rows) and dataset (columns), with the rule; None without a grid.

    With the report's ``settings`` (and ``reference``) rows follow the main table's method order and
    labels, columns its dataset order and names."""
    grid = _grid_groups(records)
    if grid.empty:
        return None
    settings = settings or {}
    reference = reference if reference is not None else pd.DataFrame(columns=["method", "label"])
    sel = grid[grid["selected"]]
    if sel.empty:  # the run has not selected yet
        return None
    datasets = order_datasets(list(grid["dataset"]), settings)
    pos = {m: i for i, m in enumerate(settings.get("order", []))}
    groups = sorted(sel.groupby(["row", "mode"], sort=False),
                    key=lambda kv: (pos.get(base_loss(str(kv[0][0])), len(pos)), kv[0]))
    rows, data = [], []
    rules = set()
    for (loss, mode), sub in groups:
        label = row_label(str(loss), reference, settings)
        cells = [Cell(f"{label} ({mode})" if mode != "linear" else label)]
        for ds in datasets:
            part = sub[sub["dataset"] == ds]
            cells.append(Cell(_point_text(part) if not part.empty else MISSING))
            for info in part["selection"]:
                rules.add(json.loads(info).get("rule", ""))
            for r in part.to_dict("records"):
                data.append({"loss": loss, "mode": mode, "dataset": ds, "seed": int(r["seed"]), "lr": float(r["lr"]),
                             "batch_size": int(r["batch_size"]), "val_map": r["score"], "test_map": r["test_map"]})
        rows.append(cells)
    notes = [f"(lr / batch) selected per loss and dataset on val mAP (rule: {', '.join(sorted(rules))}); "
             "Cole et al. 2021's linear protocol. `spmlbench report --grid-points` shows every point."]
    header = ["Method", *(dataset_label(d, settings) for d in datasets)]
    return Table("selected_points", "Selected training point (lr / batch)", header, rows, notes,
                 pd.DataFrame(data))


def grid_points_table(records: pd.DataFrame) -> Table | None:
    """Every grid point of every selection group: seeds, mean best val mAP, mean test mAP, selected or not."""
    grid = _grid_groups(records)
    if grid.empty:
        return None
    rows, data = [], []
    keys = ["dataset", "row", "mode", "group", "lr", "batch_size"]
    grid = grid.sort_values(["dataset", "row", "lr", "batch_size"], ascending=[True, True, False, True], kind="stable")
    for (ds, loss, mode, _g, lr, bs), sub in grid.groupby(keys, sort=False):
        val = [v for v in sub["score"] if math.isfinite(v)]
        ok = sub[sub["status"] == "ok"]["test_map"].astype(float)
        failed = int((sub["status"] != "ok").sum())
        seeds = ",".join(str(int(s)) for s in sorted(sub["seed"]))
        chosen = ",".join(str(int(s)) for s in sorted(sub.loc[sub["selected"], "seed"]))
        row = {"dataset": ds, "loss": loss, "mode": mode, "lr": float(lr), "batch_size": int(bs), "seeds": seeds,
               "val_map": sum(val) / len(val) if val else math.nan,
               "test_map": float(ok.mean()) if not ok.empty else math.nan, "failed": failed, "selected": chosen}
        data.append(row)
        rows.append([Cell(ds), Cell(str(loss)), Cell(f"{lr:g}"), Cell(str(int(bs))), Cell(seeds),
                     Cell(fmt(row["val_map"])), Cell(fmt(row["test_map"]) + (f" ({failed} failed)" if failed else "")),
                     Cell(f"yes (seeds {chosen})" if chosen else "", bold=bool(chosen))])
    notes = ["val: best val mAP of the run (the selection score), mean over its seeds; test: test mAP at that "
             "epoch, mean over its seeds; selected: the seeds whose reported run is this point."]
    return Table("grid_points", "Every (lr, batch) grid point",
                 ["dataset", "loss", "lr", "batch", "seeds", "val mAP", "test mAP", "selected"], rows, notes,
                 pd.DataFrame(data))
