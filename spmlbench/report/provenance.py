"""What a report was built from: records, missing cells, versions, devices, feature hashes."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd


def _distinct(values: Any) -> list[str]:
    return sorted({str(v) for v in values if v is not None and str(v) not in ("", "nan", "None")})


def _versions(values: Any) -> list[str]:
    seen: dict[str, set[str]] = {}
    for v in values:
        try:
            d = json.loads(v) if isinstance(v, str) else dict(v or {})
        except (TypeError, ValueError):
            continue
        for k, ver in d.items():
            seen.setdefault(str(k), set()).add(str(ver))
    return [f"{k} {' | '.join(sorted(v))}" for k, v in sorted(seen.items())]


def missing_lines(missing: pd.DataFrame) -> list[str]:
    """Missing cells grouped as ``group: dataset / loss [coords]: seeds ...``."""
    if missing.empty:
        return []
    out = []
    keyed: dict[str, list[int]] = {}
    for r in missing.to_dict("records"):
        coords = ", ".join(f"{k}={v}" for k, v in (r["coords"] or {}).items())
        key = f"{r['group']}: {r['dataset']} / {r['loss']}" + (f" [{coords}]" if coords else "")
        keyed.setdefault(key, []).append(int(r["seed"]))
    for key, seeds in keyed.items():
        out.append(f"{key}: seed {', '.join(str(s) for s in sorted(seeds))}")
    return out


def provenance(records: pd.DataFrame, runs: pd.DataFrame, missing: pd.DataFrame, results_dir: str) -> dict[str, Any]:
    """A summary of the inputs: record counts, used runs, missing cells, versions, devices, hashes, git revs."""
    n = len(records)
    status = records["status"].value_counts().to_dict() if n and "status" in records else {}
    hashes: dict[str, list[str]] = {}
    if not runs.empty and "features_sha256" in runs:
        for ds, sub in runs.groupby("dataset", sort=True):
            hashes[str(ds)] = [h[:12] for h in _distinct(sub["features_sha256"])]
    failed = []
    if n and "status" in records:
        for r in records[records["status"] != "ok"].to_dict("records"):
            failed.append(f"{r.get('job_id', '?')} {r.get('dataset', '?')}/{r.get('loss', '?')} seed {r.get('seed', '?')}: "
                          f"{str(r.get('error', '') or '')[:120]}")
    return {
        "results_dir": results_dir,
        "records": n,
        "ok": int(status.get("ok", 0)),
        "failed": n - int(status.get("ok", 0)),
        "used": len(runs),
        "missing_cells": len(missing),
        "missing": missing_lines(missing),
        "versions": _versions(runs["versions"]) if not runs.empty and "versions" in runs else [],
        "devices": _distinct(runs["device"]) if not runs.empty and "device" in runs else [],
        "feature_hashes": hashes,
        "git_revs": _distinct(runs["git_rev"]) if not runs.empty and "git_rev" in runs else [],
        "failed_jobs": failed,
    }


def provenance_lines(prov: dict[str, Any], max_missing: int = 40) -> list[str]:
    """Human-readable lines of a provenance dict (long missing lists are cut with a count)."""
    lines = [
        f"Built from {prov['records']} records in {prov['results_dir']} ({prov['ok']} ok, {prov['failed']} failed); "
        f"{prov['used']} used in this report.",
        f"Missing cells (dataset/loss/seed without an ok result): {prov['missing_cells']}",
    ]
    miss = prov["missing"]
    lines += [f"  - {m}" for m in miss[:max_missing]]
    if len(miss) > max_missing:
        lines.append(f"  - ... and {len(miss) - max_missing} more groups")
    lines.append("Versions: " + ("; ".join(prov["versions"]) or "—"))
    lines.append("Devices: " + (", ".join(prov["devices"]) or "—"))
    fh = prov["feature_hashes"]
    lines.append("Feature hashes: " + ("; ".join(f"{ds} {', '.join(h) or '—'}" for ds, h in fh.items()) or "—"))
    lines.append("Git revisions: " + (", ".join(prov["git_revs"]) or "—"))
    for f in prov["failed_jobs"][:10]:
        lines.append(f"  failed: {f}")
    return lines
