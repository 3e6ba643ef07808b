"""Per-(loss, dataset) selection of (lr, batch) on val mAP: Cole et al. 2021's linear protocol.

A *selection group* is every job that differs only in ``lr``, ``batch_size`` and ``seed`` (same
dataset, loss, hyperparameters, mode, epochs, ...). Each (lr, batch) of a group is a *grid point*;
each grid point x seed is an ordinary job with its own record. The selection is a pure function of
the records (:func:`select`), so re-running skips finished grid points, a resumed or a Ray run
selects the same point, and the report recomputes it from the records alone.

The score of a record is its best val mAP (the val mAP of the epoch whose test mAP it reports); a
failed record (diverged, e.g. at lr 1e-2) scores -inf and is never selected over a finished one.
Rules:

- ``first-seed`` (default): the point with the best score on the *selection seed*, the smallest
  seed having the most grid points of the group (in a run: the smallest seed of the run, which
  trains every point); the other seeds then run only at that point;
- ``each-seed``: every seed trains every point and reports its own best point;
- ``mean``: every seed trains every point; the point with the best mean score over seeds.

Ties go to the earlier point in (lr, batch) ascending order. A group with one point (``--lr`` and
``--batch-size`` given) selects it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spmlbench.experiments.jobs import JobSpec
from spmlbench.experiments.recipes import SELECT_RULES, check_choice

_KEY_FIELDS = ("dataset", "loss", "hparams", "mode", "label_seed", "split_seed", "backbone", "epochs", "val",
               "early_stop", "weights", "image_size", "exact")
_DEFAULTS: dict[str, Any] = {"weights": None, "image_size": None, "exact": False}


def _plain(value: Any) -> Any:
    """JSON-able scalar: numpy numbers to Python, NaN/None to None."""
    if value is None:
        return None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def group_key(fields: Mapping[str, Any]) -> str:
    """The selection group of a job or a record: its spec without ``lr``, ``batch_size`` and ``seed``."""
    out: dict[str, Any] = {}
    for name in _KEY_FIELDS:
        value = fields.get(name, _DEFAULTS.get(name))
        if name == "hparams":
            value = json.loads(value) if isinstance(value, str) else dict(value or {})
        elif name in ("label_seed", "split_seed", "epochs", "image_size"):
            value = _plain(value)
            value = None if value is None else int(value)
        elif name == "exact":
            value = bool(_plain(value) or False)
        else:
            value = _plain(value)
        if name in _DEFAULTS and value == _DEFAULTS[name]:
            continue
        out[name] = value
    return json.dumps(out, sort_keys=True, separators=(",", ":"))


def job_group(job: JobSpec) -> str:
    """:func:`group_key` of a JobSpec."""
    return group_key(job.to_dict())


def score(status: Any, val_map: Any) -> float:
    """A record's selection score: its best finite val mAP, -inf when it failed or has none."""
    if status != "ok" or val_map is None:
        return -math.inf
    values = [float(v) for v in val_map if v is not None and math.isfinite(float(v))]
    return max(values) if values else -math.inf


def _argmax(scores: Mapping[tuple[float, int], float]) -> tuple[float, int]:
    best = None
    for point in sorted(scores):
        if best is None or scores[point] > scores[best]:
            best = point
    assert best is not None
    return best


def _select_group(g: pd.DataFrame, rule: str) -> tuple[pd.Series, dict[str, Any]]:
    """``selected`` per row of one group's records and a description of the choice."""
    # records without lr / batch_size (hand-made or very old ones) form one point
    pts = list(zip(pd.to_numeric(g["lr"], errors="coerce").fillna(0.0).astype(float),
                   pd.to_numeric(g["batch_size"], errors="coerce").fillna(0).astype(int)))
    seeds = pd.to_numeric(g["seed"], errors="coerce").fillna(0).astype(int).tolist()
    scores = g["score"].tolist()
    selected = [False] * len(g)
    n_points = len(set(pts))
    info: dict[str, Any] = {"rule": rule, "points": n_points}
    if rule == "each-seed":
        for s in sorted(set(seeds)):
            rows = [i for i, x in enumerate(seeds) if x == s]
            win = _argmax({pts[i]: scores[i] for i in rows})
            for i in rows:
                selected[i] = pts[i] == win
        info["seeds"] = sorted(set(seeds))
    elif rule == "mean":
        by_point: dict[tuple[float, int], list[float]] = {}
        for p, sc in zip(pts, scores):
            by_point.setdefault(p, []).append(sc)
        most = max(len(v) for v in by_point.values())
        means = {p: (sum(v) / len(v) if all(math.isfinite(x) for x in v) else -math.inf)
                 for p, v in by_point.items() if len(v) == most}
        win = _argmax(means)
        selected = [p == win for p in pts]
        info.update(lr=win[0], batch_size=win[1], score=means[win], seeds=most)
    else:
        count: dict[int, int] = {}
        for s in seeds:
            count[s] = count.get(s, 0) + 1
        s0 = min(s for s, n in count.items() if n == max(count.values()))
        win = _argmax({p: sc for p, s, sc in zip(pts, seeds, scores) if s == s0})
        selected = [p == win for p in pts]
        info.update(lr=win[0], batch_size=win[1], seed=s0,
                    score=max(sc for p, s, sc in zip(pts, seeds, scores) if s == s0 and p == win))
    return pd.Series(selected, index=g.index, dtype=bool), info


def select(records: pd.DataFrame, rule: str | Mapping[str, str] = "first-seed") -> pd.DataFrame:
    """``records`` with columns ``group``, ``score``, ``selected`` (bool) and ``selection`` (JSON of the choice).

    ``rule``: one rule for every group, or a mapping group -> rule (groups not in it: ``first-seed``).
    """
    df = records.copy()
    if df.empty:
        for col, dtype in (("group", object), ("score", float), ("selected", bool), ("selection", object)):
            df[col] = pd.Series(dtype=dtype)
        return df
    df["group"] = [group_key(r) for r in df.to_dict("records")]
    df["score"] = [score(s, v) for s, v in zip(df["status"], df["val_map"])]
    df["selected"] = False
    df["selection"] = ""
    for key, g in df.groupby("group", sort=False):
        r = rule if isinstance(rule, str) else rule.get(str(key), "first-seed")
        check_choice("select", r, SELECT_RULES)
        sel, info = _select_group(g.reindex(columns=[*g.columns, *(c for c in ("lr", "batch_size", "seed")
                                                                 if c not in g.columns)]), r)
        df.loc[g.index, "selected"] = sel
        df.loc[g.index, "selection"] = json.dumps(info, sort_keys=True, default=float)
    df["selected"] = df["selected"].astype(bool)
    return df


def recorded_rules(records: pd.DataFrame) -> dict[str, str]:
    """The rule each group was selected under by the run that marked its records (``selection`` column)."""
    out: dict[str, str] = {}
    if records.empty or "selection" not in records.columns:
        return out
    for row in records.to_dict("records"):
        text = row.get("selection")
        if isinstance(text, str) and text:
            rule = json.loads(text).get("rule")
            if rule in SELECT_RULES:
                out.setdefault(group_key(row), rule)
    return out


def first_stage(jobs: Sequence[JobSpec], rule: str) -> list[JobSpec]:
    """The jobs a run trains before it can select: with ``first-seed``, every point of each group on
    the group's smallest seed (every seed of a one-point group); with the other rules, every job."""
    check_choice("select", rule, SELECT_RULES)
    if rule != "first-seed":
        return list(jobs)
    first: dict[str, int] = {}
    points: dict[str, set[tuple[float, int]]] = {}
    for j in jobs:
        g = job_group(j)
        first[g] = min(first.get(g, j.seed), j.seed)
        points.setdefault(g, set()).add((j.lr, j.batch_size))
    return [j for j in jobs if len(points[job_group(j)]) == 1 or j.seed == first[job_group(j)]]


def _records_of(out_dir: Path, jobs: Sequence[JobSpec]) -> pd.DataFrame:
    from spmlbench.experiments.records import load_records

    df = load_records(out_dir)
    return df[df["job_id"].isin({j.job_id for j in jobs})]


def selected_jobs(jobs: Sequence[JobSpec], records: pd.DataFrame, rule: str) -> list[JobSpec]:
    """The jobs to keep after selection: for ``first-seed``, every seed of the point the first stage's
    records chose (jobs not yet run included); for the others, the selected records' jobs."""
    sel = select(records, rule)
    # a grid whose every point failed keeps nothing (see untrained_groups): a failed point was selected, and
    # its other seeds run, before; a group of one point (no grid) keeps its failed jobs as before
    keep = [bool(ok) and (math.isfinite(float(sc)) or json.loads(text)["points"] == 1)
            for ok, sc, text in zip(sel["selected"], sel["score"], sel["selection"])]
    if rule != "first-seed":
        chosen = set(sel.loc[keep, "job_id"]) if len(sel) else set()
        return [j for j in jobs if j.job_id in chosen]
    point: dict[str, tuple[float, int]] = {}
    for key, text in sel.loc[keep, ["group", "selection"]].itertuples(index=False) if len(sel) else ():
        info = json.loads(text)
        point[key] = (float(info["lr"]), int(info["batch_size"]))
    return [j for j in jobs if point.get(job_group(j)) == (float(j.lr), int(j.batch_size))]


def untrained_groups(jobs: Sequence[JobSpec], chosen: Sequence[JobSpec]) -> dict[str, list[JobSpec]]:
    """The selection groups of ``jobs`` of which nothing was chosen (no grid point trained), with their jobs."""
    kept = {job_group(j) for j in chosen}
    out: dict[str, list[JobSpec]] = {}
    for j in jobs:
        if job_group(j) not in kept:
            out.setdefault(job_group(j), []).append(j)
    return out


def run_selected(jobs: Sequence[JobSpec], out_dir: str | Path, rule: str,
                 run: Callable[[list[JobSpec]], Any]) -> tuple[list[Any], list[JobSpec]]:
    """Run ``jobs`` under selection ``rule`` with ``run`` (a runner: local or Ray); mark the records.

    Returns the runner's summaries (one per stage) and the selected jobs (what a table reports).
    """
    out = Path(out_dir)
    jobs = list(dict.fromkeys(jobs))
    stage1 = first_stage(jobs, rule)
    summaries = [run(stage1)]
    chosen = selected_jobs(jobs, _records_of(out, stage1), rule)
    done = set(stage1)
    rest = [j for j in chosen if j not in done]
    if rest:  # first-seed: the other seeds at the selected points
        summaries.append(run(rest))
    mark_records(out, list(dict.fromkeys([*stage1, *chosen])), rule)
    return summaries, chosen


def mark_records(out_dir: str | Path, jobs: Sequence[JobSpec], rule: str) -> pd.DataFrame:
    """Write ``selected`` and ``selection`` into the records of ``jobs`` (those that changed), atomically."""
    from spmlbench.experiments.records import update_record

    recs = _records_of(Path(out_dir), jobs)
    stored = {jid: (sel, text) for jid, sel, text in zip(recs["job_id"], recs["selected"], recs["selection"])}
    marked = select(recs, rule)
    for jid, sel, text in zip(marked["job_id"], marked["selected"], marked["selection"]):
        if stored.get(jid) != (bool(sel), text):
            update_record(out_dir, str(jid), selected=bool(sel), selection=str(text))
    return marked


def planned_stages(jobs: Sequence[JobSpec], rule: str) -> tuple[int, str]:
    """How many jobs a run under ``rule`` trains in all (first stage, then the other seeds of each selecting group
    at its point) and the stages in words, e.g. ``grid on seed 0: 8 points x 16 losses; then 2 seeds at the
    selected point``."""
    stage1 = first_stage(jobs, rule)
    groups: dict[str, tuple[set[tuple[float, int]], set[int]]] = {}
    for j in jobs:
        pts, seeds = groups.setdefault(job_group(j), (set(), set()))
        pts.add((j.lr, j.batch_size))
        seeds.add(j.seed)
    selecting = {g: v for g, v in groups.items() if len(v[0]) > 1}
    if rule != "first-seed" or not selecting:
        text = f"{len(stage1)} jobs" + (f"; {len(selecting)} groups select (lr, batch) by rule {rule}" if selecting
                                        else "")
        return len(stage1), text
    later = sum(len(seeds) - 1 for _, seeds in selecting.values())
    points = sorted({len(p) for p, _ in selecting.values()})
    n_seeds = sorted({len(s) for _, s in selecting.values()})
    first = min(j.seed for j in jobs)
    text = (f"grid on seed {first}: {'/'.join(map(str, points))} (lr, batch) points x {len(selecting)} configs"
            + (f"; then {'/'.join(str(n - 1) for n in n_seeds)} more seeds at each selected point" if later else ""))
    return len(stage1) + later, text
