"""A table shows what was run: run manifests, and a report that joins on job ids.

The tests on the shared results folder are marked slow (about 90 s of CPU for its seven runs; CI runs them).

One results folder on digits holds a default-style run with its (lr, batch) grid, a ``--epochs 3`` preview, a
``--grid`` run of GR beside it, table1, the ablation-gr and grid-gr experiments and a plugin run: the four
combinations that once gave silent wrong tables (e5332b0, 308ca60, d6bf4d9, f9ffec0). Each run's report must
equal, cell by cell, the mean ± std of exactly the records its manifest lists; the test reads the manifest and
the Parquet records itself.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from spmlbench.cli import main

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "my_loss.py")
GRID = ["--lr-grid", "0.01,0.0001", "--batch-grid", "16"]  # a small (lr, batch) selection grid: 2 points
RUNS = {  # name -> arguments; order matters: later runs sit beside earlier ones in one folder
    "default": ["--losses", "an,gr", "--seeds", "0,1", "--epochs", "2", *GRID],
    "preview": ["--losses", "an,gr", "--seeds", "0,1", "--epochs", "1", *GRID],
    "gr-grid": ["--losses", "gr", "--grid", "gr.q2=0.01,0.1", "--seeds", "0,1", "--epochs", "2", *GRID],
    "table1": ["--experiment", "table1", "--datasets", "digits", "--losses", "an,gr,role", "--seeds", "0,1",
               "--epochs", "2", *GRID],
    "ablation": ["--experiment", "ablation-gr", "--datasets", "digits", "--seeds", "0,1", "--epochs", "1"],
    "grid-gr": ["--experiment", "grid-gr", "--datasets", "digits", "--seeds", "0", "--epochs", "1"],
    "plugin": ["--losses", "an,an_weighted", "--plugin", EXAMPLE, "--seeds", "0,1", "--epochs", "1", "--lr", "0.01",
               "--batch-size", "16"],
}


def call(*args: str) -> tuple[int, str]:
    """``spmlbench <args>`` in-process; (exit code, nothing else: output goes to the terminal capture)."""
    try:
        main(list(args))
    except SystemExit as exc:
        return (exc.code if isinstance(exc.code, int) else 0), ""
    return 0, ""


@dataclasses.dataclass
class Folder:
    home: Path
    out: Path
    run_ids: dict[str, str]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Folder]:
    home, out = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPMLBENCH_HOME", str(home))
        mp.setenv("COLUMNS", "200")
        ids: dict[str, str] = {}
        for name, args in RUNS.items():
            before = set((out / "runs").glob("*.json")) if (out / "runs").exists() else set()
            code, _ = call("run", *args, "--out", str(out), "--processes", "1")
            assert code == 0, name
            new = set((out / "runs").glob("*.json")) - before
            assert len(new) == 1, name  # every run writes its own manifest
            ids[name] = new.pop().stem
        yield Folder(home, out, ids)


def manifest(folder: Folder, name: str) -> dict[str, Any]:
    return json.loads((folder.out / "runs" / f"{folder.run_ids[name]}.json").read_text())


def listed_cells(folder: Folder, name: str) -> pd.DataFrame:
    """Each cell of a run with the test mAP of exactly the record its manifest lists (read here, not by spmlbench)."""
    rows = []
    for c in manifest(folder, name)["cells"]:
        assert c["selected"] in c["jobs"]
        rec = pq.read_table(folder.out / "records" / f"{c['selected']}.parquet").to_pylist()[0]
        assert rec["job_id"] == c["selected"] and rec["status"] == "ok"
        rows.append({"group": c["group"], "row": c["row"], "dataset": c["dataset"], "seed": c["seed"],
                     "coords": json.dumps(c["coords"], sort_keys=True), "test_map": rec["test_map"],
                     "epochs": rec["epochs"], "lr": rec["lr"], "batch_size": rec["batch_size"]})
    return pd.DataFrame(rows)


def stats(frame: pd.DataFrame, by: list[str]) -> dict[tuple[Any, ...], tuple[int, float, float]]:
    out = {}
    for key, sub in frame.groupby(by, sort=False):
        xs = sub["test_map"].tolist()
        out[key if isinstance(key, tuple) else (key,)] = (
            len(xs), statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else float("nan"))
    return out


def report_csv(folder: Folder, name: str, tmp_path: Path, *extra: str) -> dict[str, pd.DataFrame]:
    dest = tmp_path / name
    code, _ = call("report", "--results", str(folder.out), "--run", folder.run_ids[name], "--format", "csv",
                   "--out", str(dest), *extra)
    assert code == 0
    return {p.stem: pd.read_csv(p) for p in dest.glob("*.csv")}


def assert_same(got: tuple[int, float, float], want: tuple[int, float, float]) -> None:
    assert got[0] == want[0]
    assert got[1] == pytest.approx(want[1], abs=1e-9)
    if want[0] > 1:
        assert got[2] == pytest.approx(want[2], abs=1e-9)


def check_main(folder: Folder, name: str, tmp_path: Path) -> dict[tuple[Any, ...], tuple[int, float, float]]:
    """The main table of run ``name`` equals its listed records, row by row; returns the expected stats."""
    want = stats(listed_cells(folder, name), ["row", "dataset"])
    main_csv = report_csv(folder, name, tmp_path)["main"]
    got = {(r["method"], r["dataset"]): (int(r["n"]), r["mean"], r["std"]) for r in main_csv.to_dict("records")
           if int(r["n"]) > 0}
    assert set(got) == set(want)
    for key, value in want.items():
        assert_same(got[key], value)
    return want


@pytest.mark.slow
def test_every_run_wrote_a_manifest_with_its_cells(folder: Folder) -> None:
    assert len(set(folder.run_ids.values())) == len(RUNS)
    m = manifest(folder, "default")
    assert m["command"].startswith("spmlbench run --losses an,gr") and m["select"] == "first-seed"
    assert {c["row"] for c in m["cells"]} == {"an", "gr"} and all(len(c["jobs"]) == 2 for c in m["cells"])
    job = m["jobs"][m["cells"][0]["selected"]]
    assert job["recipe"] == "cole" and job["loss_version"] == 1 and job["epochs"] == 2
    assert m["versions"]["torch"] and m["git_rev"] and m["host"]
    table1 = manifest(folder, "table1")["experiment"]
    assert table1["name"] == "table1" and len(table1["sha256"]) == 64 and "[[groups]]" in table1["toml"]


@pytest.mark.slow
def test_the_same_command_updates_its_run(folder: Folder) -> None:
    before = manifest(folder, "preview")
    code, _ = call("run", *RUNS["preview"], "--out", str(folder.out), "--processes", "1")
    assert code == 0
    after = manifest(folder, "preview")
    assert len(list((folder.out / "runs").glob("*.json"))) == len(RUNS)
    assert after["created"] == before["created"] and after["cells"] == before["cells"]


@pytest.mark.slow
def test_default_run_reports_its_own_selected_point(folder: Folder, tmp_path: Path) -> None:
    """e5332b0: a GR grid beside the default run never becomes 'GR'; the paired test uses the default GR."""
    want = check_main(folder, "default", tmp_path)
    paired = report_csv(folder, "default", tmp_path)["paired"]
    row = paired[paired["other"] == "an"].iloc[0]
    assert row["reference"] == "gr" and row["ref_mean"] == pytest.approx(want[("gr", "digits")][1], abs=1e-9)
    grid = check_main(folder, "gr-grid", tmp_path)
    assert {k[0] for k in grid} == {"gr (q2=0.01)", "gr (q2=0.1)"}


@pytest.mark.slow
def test_a_preview_never_mixes_into_table1(folder: Folder, tmp_path: Path) -> None:
    """308ca60: table1's rows read table1's jobs (2 epochs), the preview's its own (1 epoch)."""
    table1 = check_main(folder, "table1", tmp_path)
    preview = check_main(folder, "preview", tmp_path)
    assert set(listed_cells(folder, "table1")["epochs"]) == {2}
    assert set(listed_cells(folder, "preview")["epochs"]) == {1}
    assert table1[("an", "digits")][1] != pytest.approx(preview[("an", "digits")][1], abs=1e-6)
    # table1's AN and GR are the default run's jobs (same spec, same ids): reused, so the same numbers
    assert table1[("an", "digits")] == check_main(folder, "default", tmp_path)[("an", "digits")]


@pytest.mark.slow
def test_ablation_rows_read_their_fixed_point(folder: Folder, tmp_path: Path) -> None:
    """f9ffec0: the ablation's baseline row is filled beside a default run that selected another point."""
    cells = listed_cells(folder, "ablation")
    assert set(zip(cells["lr"], cells["batch_size"])) == {(1e-4, 8)}
    want = stats(cells, ["group", "dataset"])
    table = report_csv(folder, "ablation", tmp_path)["ablation"]
    got = {(r["group"], r["dataset"]): (int(r["n"]), r["mean"], r["std"]) for r in table.to_dict("records")
           if int(r["n"]) > 0}
    assert set(got) == set(want) and ("gr", "digits") in got
    for key, value in want.items():
        assert_same(got[key], value)


@pytest.mark.slow
def test_grid_cells_read_their_own_jobs(folder: Folder, tmp_path: Path) -> None:
    """d6bf4d9: the q2-q3 grid's default point is its own job, never a wT-bT record."""
    cells = listed_cells(folder, "grid-gr")
    tables = report_csv(folder, "grid-gr", tmp_path)
    for group, sub in cells.groupby("group"):
        table = tables[f"grid_{group}_digits"]
        axes = list(json.loads(sub["coords"].iloc[0]))
        for r in table.to_dict("records"):
            coords = json.dumps({a: r[a] for a in axes}, sort_keys=True)
            hit = sub[sub["coords"] == coords]
            assert int(r["n"]) == len(hit), (group, coords)
            if len(hit):
                assert r["mean"] == pytest.approx(hit["test_map"].mean(), abs=1e-9)


@pytest.mark.slow
def test_plugin_run_compares_the_plugin_with_its_baselines(folder: Folder, tmp_path: Path) -> None:
    check_main(folder, "plugin", tmp_path)
    tables = report_csv(folder, "plugin", tmp_path, "--reference", "an_weighted", "--plugin", EXAMPLE)
    assert set(tables["paired"]["reference"]) == {"an_weighted"} and set(tables["paired"]["other"]) == {"an"}
    label = tables["main"].set_index("method").loc["an_weighted", "label"]
    assert label == "Assume negative, weighted negatives"  # the registry title the run recorded


@pytest.mark.slow
def test_report_shows_the_latest_run_by_default(folder: Folder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    latest = max((json.loads(p.read_text()) for p in (folder.out / "runs").glob("*.json")), key=lambda m: m["updated"])
    code, _ = call("report", "--results", str(folder.out), "--format", "csv")
    got = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert code == 0 and set(got["method"]) == {c["row"] for c in latest["cells"]}  # the newest run
    code, _ = call("runs", "--results", str(folder.out))
    text = capsys.readouterr().out
    assert code == 0 and all(rid in text for rid in folder.run_ids.values())


@pytest.mark.slow
def test_a_swapped_record_is_rerun(folder: Folder, capsys: pytest.CaptureFixture[str]) -> None:
    """A record file holding another job's result under this job's name is not taken as finished."""
    cells = manifest(folder, "plugin")["cells"]
    a, b = (c["selected"] for c in cells if c["row"] == "an")
    recs = folder.out / "records"
    keep = (recs / f"{b}.parquet").read_bytes()
    shutil.copyfile(recs / f"{a}.parquet", recs / f"{b}.parquet")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPMLBENCH_HOME", str(folder.home))
        capsys.readouterr()
        code, _ = call("run", *RUNS["plugin"], "--out", str(folder.out), "--processes", "1")
    err = capsys.readouterr().err
    assert code == 0 and f"holds job {a}'s record, not this job's; re-running the job" in err
    row = pq.read_table(recs / f"{b}.parquet").to_pylist()[0]
    assert row["job_id"] == b
    assert row["test_map"] == pq.read_table(io.BytesIO(keep)).to_pylist()[0]["test_map"]  # retrained: the same


def test_a_new_loss_version_reruns_only_its_jobs(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spmlbench.experiments.inputs import ensure_inputs
    from spmlbench.experiments.plan import RunRequest, plan_run
    from spmlbench.experiments.runner import run_jobs
    from spmlbench.losses import LOSSES

    request = RunRequest(losses=["an", "gr"], seeds=[0], epochs=1, lr=0.01, batch_size=8)
    out = tmp_path / "versions"
    ensure_inputs(plan_run(request).missing, None)  # digits, prepared offline
    first = plan_run(request)
    assert not first.missing and not first.provisional
    assert run_jobs(first.jobs, out).ran == [j.job_id for j in first.jobs]
    monkeypatch.setitem(LOSSES._entries, "an", dataclasses.replace(LOSSES.get("an"), version=2))
    second = plan_run(request)
    an = [j for j in second.jobs if j.loss == "an"]
    assert {j.job_id for j in an}.isdisjoint({j.job_id for j in first.jobs})
    assert [j.job_id for j in second.jobs if j.loss == "gr"] == [j.job_id for j in first.jobs if j.loss == "gr"]
    summary = run_jobs(second.jobs, out)
    assert summary.ran == [j.job_id for j in an]
    assert summary.skipped == [j.job_id for j in second.jobs if j.loss == "gr"]
    row = pq.read_table(out / "records" / f"{an[0].job_id}.parquet").to_pylist()[0]
    assert row["loss_version"] == 2 and row["recipe"] == "cole"


def test_dry_run_prints_the_plan_and_writes_nothing(cli, home: Path, tmp_path: Path) -> None:
    out = tmp_path / "res"
    res = cli("run", "--dry-run", "--experiment", "table1", "--datasets", "voc", "--out", str(out))
    assert res.code == 0, res.err
    assert "57 table cells (19 rows x 1 dataset x 3 seeds), 456 jobs" in res.out
    assert f"{home}/voc/labels.parquet: dataset 'voc' is not prepared; run 'spmlbench prepare voc'" in res.out
    assert "pseudo/vlpl.parquet" in res.out and "image-passes" in res.out
    assert not out.exists() and list(home.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("columns", [80, 120])
def test_console_output_never_cuts_a_number(folder: Folder, columns: int, capsys: pytest.CaptureFixture[str]) -> None:
    """At 80 and 120 columns, the run's own table and the reports print every number whole (no ellipsis)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPMLBENCH_HOME", str(folder.home))
        mp.setenv("COLUMNS", str(columns))
        capsys.readouterr()
        outputs = []
        for args in (["run", *RUNS["table1"], "--out", str(folder.out), "--processes", "1"],  # all finished: its table
                     ["report", "--results", str(folder.out), "--run", folder.run_ids["default"]],
                     ["report", "--results", str(folder.out), "--experiment", "table1"]):
            code, _ = call(*args)
            text = capsys.readouterr().out
            assert code == 0 and "…" not in text, args
            table_lines = [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]
            assert table_lines and max(len(line) for line in table_lines) <= columns, args
            outputs.append(text)
    run_table, report_default, report_table1 = outputs
    for name, text in (("table1", run_table), ("default", report_default), ("table1", report_table1)):
        for (row, _ds), (_n, mean, std) in stats(listed_cells(folder, name), ["row", "dataset"]).items():
            assert f"{mean:.2f} ± {std:.2f}" in text, (name, row)
    assert "vs GR Loss" in run_table and "ref." in run_table  # the compact paired column


def test_an_edited_then_reverted_plugin_reports_what_ran(home: Path, tmp_path: Path, cli) -> None:
    """A plugin run at v1 (seed 0), edited to v2 (seeds 0-1), reverted to v1 (seeds 0-1): the report is the last
    run's, v1 on both seeds, never v2's seed 0 beside v1's seed 1 (each version has its own job ids and records)."""
    plugin, out = tmp_path / "p.py", tmp_path / "res"
    v1 = Path(EXAMPLE).read_text().replace('"an_weighted"', '"an_edited"')  # a name of its own in this process
    v2 = v1.replace("neg_weight: float = 0.5", "neg_weight: float = 0.05")
    assert v2 != v1
    runs = []
    for text, seeds in ((v1, "0"), (v2, "0,1"), (v1, "0,1")):
        plugin.write_text(text)
        res = cli("run", "--losses", "an_edited", "--plugin", str(plugin), "--seeds", seeds, "--epochs", "1",
                  "--lr", "0.01", "--batch-size", "16", "--out", str(out), "--processes", "1")
        assert res.code == 0, res.err
        runs.append(max((out / "runs").glob("*.json"), key=lambda p: json.loads(p.read_text())["updated"]).stem)
    assert len(set(runs)) == 3  # another source is another run
    listed = [json.loads((out / "runs" / f"{runs[2]}.json").read_text())["cells"]]
    ids = [c["selected"] for c in listed[0]]
    recs = [pq.read_table(out / "records" / f"{i}.parquet").to_pylist()[0] for i in ids]
    assert {r["loss_source"] for r in recs} == {json.loads((out / "runs" / f"{runs[0]}.json").read_text())
                                                ["plugins"][0]["sha256"]}  # v1's source
    want = statistics.mean(r["test_map"] for r in recs)
    res = cli("report", "--results", str(out), "--format", "csv", "--plugin", str(plugin))
    got = pd.read_csv(io.StringIO(res.out)).set_index("method").loc["an_edited"]
    assert res.code == 0 and int(got["n"]) == 2 and got["mean"] == pytest.approx(want, abs=1e-9)
