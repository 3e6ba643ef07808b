"""``spmlbench losses``: the table lists all 16 losses, --json parses, a bad value exits 2 with one line."""

from __future__ import annotations

import json

from spmlbench.losses import list_losses

NAMES = list_losses()


def test_table_lists_all_losses(cli) -> None:
    res = cli("losses")
    assert res.code == 0, res.err
    first_cells = {line.split("│")[1].strip() for line in res.out.splitlines() if line.startswith("│")}
    assert set(NAMES) <= first_cells
    assert "Chen et al., IJCAI" in res.out and "coco [0, 10, -2, -8]" in res.out and "else [0, 2, -2, -2]" in res.out


def test_json(cli) -> None:
    res = cli("losses", "--json")
    assert res.code == 0, res.err
    rows = json.loads(res.out)
    assert [r["name"] for r in rows] == NAMES
    by_name = {r["name"]: r for r in rows}
    assert by_name["role"]["stateful"] is True and by_name["gr"]["stateful"] is False
    assert by_name["bce"]["uses_clean_labels"] is True
    assert by_name["gr"]["defaults"]["alpha"] == [0.5, 2.0, 0.8, 0.5]
    assert by_name["em_apl"]["per_dataset"]["nuswide"] == {"alpha": 0.1, "beta": 0.2, "warmup_epoch": 4}


def test_json_resolved_for_dataset(cli) -> None:
    rows = {r["name"]: r for r in json.loads(cli("losses", "--json", "--dataset", "cub").out)}
    assert rows["epr"]["defaults"]["expected_num_pos"] == 31.4
    assert rows["em"]["defaults"]["alpha"] == 0.01


def test_bad_hyperparameter_one_line_exit_2(cli) -> None:
    res = cli("losses", "--check", "gr.q3=-1")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and "gr.q3=-1: must be >= 0" in lines[0]
    res = cli("losses", "--check", "ll_r.delta_rel=150")
    assert res.code == 2 and "ll_r.delta_rel=150: must be in (0, 100)" in res.err
    res = cli("losses", "--check", "nosuch.x=1")
    assert res.code == 2 and "unknown loss 'nosuch'" in res.err
    res = cli("losses", "--check", "gr-q3")
    assert res.code == 2 and "LOSS.PARAM=VALUE" in res.err


def test_good_hyperparameter_ok(cli) -> None:
    res = cli("losses", "--check", "gr.q3=1.5", "--check", "gr.beta=[0,10,-2,-8]")
    assert res.code == 0, res.err
    assert "gr.q3=1.5: ok" in res.out and "beta=[0, 10, -2, -8]" in res.out


def test_dataset_view_shows_the_large_loss_settings_and_their_source(cli) -> None:
    res = cli("losses", "--dataset", "voc")
    assert res.code == 0, res.err
    row = next(line for line in res.out.splitlines() if line.startswith("│ ll_r "))
    assert "delta_rel=0.2" in row
    assert "ll_r on voc: snucml/LargeLossMatters issue #4" in res.out
