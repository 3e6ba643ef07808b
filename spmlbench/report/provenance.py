"""What a report was built from: the runs, their cells without a result, versions, devices, feature hashes."""

from __future__ import annotations

import json
from collections.abc import Sequence
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
    """Cells without an ok result, one line per dataset: how many, and why (failed, not run, not selected)."""
    if missing.empty:
        return []
    out = []
    for ds, sub in missing.groupby("dataset", sort=False):
        why = ", ".join(f"{n} {status}" for status, n in sub["status"].value_counts(sort=False).items())
        rows = ", ".join(dict.fromkeys(sub["loss"].astype(str)))
        out.append(f"{ds}: {len(sub)} cells ({why}): {rows}")
    return out


def provenance(runs: pd.DataFrame, missing: pd.DataFrame, results_dir: str,
               manifests: Sequence[dict[str, Any]] = (), unlisted: int = 0) -> dict[str, Any]:
    """A summary of the inputs: the runs shown, the cells used and without a result, versions, devices, hashes."""
    hashes: dict[str, list[str]] = {}
    if not runs.empty and "features_sha256" in runs:
        for ds, sub in runs.groupby("dataset", sort=True):
            hashes[str(ds)] = [h[:12] for h in _distinct(sub["features_sha256"])]
    failed = []
    if not missing.empty:
        for r in missing[missing["status"] == "failed"].to_dict("records"):
            failed.append(f"{r['job_id']} {r['dataset']}/{r['loss']} seed {r['seed']}")
    return {
        "results_dir": results_dir,
        "runs": [f"{m['run_id']} ({m['updated']}, {m.get('status', '?')}): {m['command']}" for m in manifests],
        "manifests": [f"{results_dir}/runs/{m['run_id']}.json" for m in manifests],
        "used": len(runs),
        "missing_cells": len(missing),
        "missing": missing_lines(missing),
        "unlisted": unlisted,
        "versions": _versions(runs["versions"]) if not runs.empty and "versions" in runs else [],
        "devices": _distinct(runs["device"]) if not runs.empty and "device" in runs else [],
        "feature_hashes": hashes,
        "git_revs": _distinct(runs["git_rev"]) if not runs.empty and "git_rev" in runs else [],
        "failed_jobs": failed,
    }


def provenance_lines(prov: dict[str, Any]) -> list[str]:
    """Human-readable lines of a provenance dict."""
    lines = [f"Run: {r}" for r in prov["runs"]] or [f"Records without a run manifest in {prov['results_dir']}."]
    lines.append(f"Cells with a result: {prov['used']}; without: {prov['missing_cells']}"
                 + (f" (their job ids: {', '.join(prov['manifests'])})" if prov["missing_cells"] and prov["manifests"]
                    else ""))
    lines += [f"  - {m}" for m in prov["missing"]]
    for f in prov["failed_jobs"][:10]:
        lines.append(f"  failed: {f}")
    if len(prov["failed_jobs"]) > 10:
        lines.append(f"  ... and {len(prov['failed_jobs']) - 10} more failed jobs")
    if prov["unlisted"]:
        lines.append(f"{prov['unlisted']} records in {prov['results_dir']} belong to no run manifest (older runs); "
                     "'spmlbench report --unlisted' shows them apart.")
    lines.append("Versions: " + ("; ".join(prov["versions"]) or "—"))
    lines.append("Devices: " + (", ".join(prov["devices"]) or "—"))
    fh = prov["feature_hashes"]
    lines.append("Feature hashes: " + ("; ".join(f"{ds} {', '.join(h) or '—'}" for ds, h in fh.items()) or "—"))
    lines.append("Git revisions: " + (", ".join(prov["git_revs"]) or "—"))
    return lines
