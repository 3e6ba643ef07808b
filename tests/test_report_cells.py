"""An experiment's rows keep one set of training settings across seeds (report/cell_settings.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from spmlbench.experiments.spec import load_experiment
from spmlbench.report.cell_settings import expected
from spmlbench.report.load import load_results, match_experiment
from test_report import record, write_records


def _rec(loss: str, seed: int, value: float, *, epochs: int, created: str, val: str = "clean") -> dict:
    r = record("digits", loss, seed, value)
    tag = f"{loss}{seed}{epochs}{val}"
    return {**r, "epochs": epochs, "early_stop": "none", "val": val, "lr": 1e-2, "batch_size": 16,
            "created": created, "job_id": (tag.encode().hex() + "0" * 16)[:16]}


def _cells(tmp_path: Path, recs: list[dict]) -> dict[tuple[str, int], float]:
    out = write_records(tmp_path / "res", recs)
    runs, _ = match_experiment(load_results(out), load_experiment("table1", datasets=["digits"]))
    return {(r["loss"], int(r["seed"])): float(r["test_map"]) for r in runs.to_dict("records")}


def test_expected_settings_follow_the_recipes() -> None:
    assert expected({"dataset": "digits", "loss": "an", "hparams": {}, "seed": 0, "mode": "linear"}) == {
        "epochs": 25, "early_stop": "none", "val": "clean"}  # Cole et al.'s linear budget
    assert expected({"dataset": "voc", "loss": "gr", "hparams": {}, "seed": 0, "mode": "e2e"}) == {
        "epochs": 8, "early_stop": "drop:2", "val": "clean"}  # GR's own recipe
    assert expected({"dataset": "digits", "loss": "epr", "hparams": {}, "seed": 0, "mode": "linear"}) is not None


def test_a_row_never_mixes_settings_across_seeds(tmp_path: Path) -> None:
    full = [_rec("an", s, 70.0 + s, epochs=25, created="2026-01-01") for s in (0, 1, 2)]
    short = [_rec("an", s, 50.0 + s, epochs=3, created="2026-03-01") for s in (0, 1)]  # newer preview
    observed = [_rec("gr", s, 60.0 + s, epochs=25, created="2026-03-01", val="observed") for s in (0, 1, 2)]
    got = _cells(tmp_path, full + short + observed)
    assert [got[("an", s)] for s in (0, 1, 2)] == [70.0, 71.0, 72.0]
    assert ("gr", 0) in got and got[("gr", 0)] == 60.0  # only observed-val runs: used as they are


def test_without_the_expected_settings_one_settings_wins(tmp_path: Path) -> None:
    a = [_rec("an", s, 50.0 + s, epochs=3, created="2026-03-01") for s in (0, 1)]
    b = [_rec("an", 2, 40.0, epochs=5, created="2026-04-01")]  # newer, but covers fewer seeds
    got = _cells(tmp_path, a + b)
    assert {k: v for k, v in got.items() if k[0] == "an"} == {("an", 0): 50.0, ("an", 1): 51.0}


@pytest.mark.parametrize("experiment", ["table1", ""])
def test_the_experiments_own_runs_win_among_other_settings(tmp_path: Path, experiment: str) -> None:
    mine = [{**_rec("an", s, 30.0 + s, epochs=3, created="2026-01-01"), "experiment": experiment} for s in (0, 1)]
    other = [_rec("an", s, 20.0 + s, epochs=4, created="2026-05-01") for s in (0, 1)]
    got = _cells(tmp_path, mine + other)
    assert got[("an", 0)] == (30.0 if experiment else 20.0)  # else: the newest
