"""Records that no run manifest lists (results folders from before manifests), shown apart.

They are never merged into a run's cells. Each (loss, hyperparameters, training settings) is its own row; a
loss with several such configs on a dataset gets every one labelled by the keys that differ between them
(``gr (epochs=3)``, ``gr (epochs=25)``), so no config takes the plain name of another. Of a selection grid only
the points their own run marked ``selected`` are shown (the record says so; nothing is selected again).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

# training settings that change a result besides the hyperparameters
SETTING_KEYS = ("backbone", "epochs", "val", "early_stop", "weights", "image_size", "exact", "loss_version",
                "loss_source")


def _config(rec: dict[str, Any]) -> dict[str, Any]:
    """A record's hyperparameters and training settings (absent or NaN ones left out)."""
    out = dict(rec["hp"])
    for key in SETTING_KEYS:
        value = rec.get(key)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        out[key] = value.item() if hasattr(value, "item") else value
    return out


def unlisted_runs(records: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(runs, missing)`` of records without a manifest: one row per config (see the module docstring);
    ``missing`` holds the (dataset, row, seed) combinations of the seen datasets x rows x seeds without an ok record."""
    empty = pd.DataFrame(columns=["run_id", "group", "dataset", "loss", "seed", "coords", "status", "job_id"])
    if records.empty:
        return records, empty
    chosen = records[records["selected"].fillna(True).astype(bool)] if "selected" in records else records
    ok = chosen[chosen["status"] == "ok"].copy()
    if ok.empty:
        return ok, empty
    ok["canon"] = [json.dumps(_config(r), sort_keys=True, default=str) for r in ok.to_dict("records")]
    labels: dict[tuple[str, str, str, str], str] = {}
    for (loss, mode, ds), sub in ok.groupby(["loss", "mode", "dataset"], sort=False):
        configs = [json.loads(c) for c in dict.fromkeys(sub["canon"])]
        keys = sorted({k for c in configs for k in c})
        varying = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs}) > 1]
        for canon, cfg in zip(dict.fromkeys(sub["canon"]), configs):
            diff = ", ".join(f"{k}={cfg.get(k)}" for k in varying)
            labels[(str(loss), str(mode), str(ds), canon)] = f"{loss} ({diff})" if diff else str(loss)
    ok["row"] = [labels[key] for key in zip(ok["loss"].astype(str), ok["mode"].astype(str), ok["dataset"].astype(str),
                                            ok["canon"])]
    ok["group"], ok["run_id"] = "unlisted", ""
    ok["coords"] = [{} for _ in range(len(ok))]
    ok = ok.sort_values("created", kind="stable").drop_duplicates(subset=["row", "dataset", "mode", "seed"], keep="last")
    ok = ok.reset_index(drop=True)
    missing = []
    for _mode, sub in ok.groupby("mode", sort=False):
        have = set(zip(sub["row"], sub["dataset"], sub["seed"]))
        for row in sub["row"].unique():
            for ds in sub["dataset"].unique():
                for seed in sorted(sub["seed"].unique()):
                    if (row, ds, seed) not in have:
                        missing.append({"run_id": "", "group": "unlisted", "dataset": ds, "loss": row, "seed": int(seed),
                                        "coords": {}, "status": "missing", "job_id": ""})
    return ok.drop(columns="canon"), pd.DataFrame(missing, columns=empty.columns)
