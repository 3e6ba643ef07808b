"""Experiment specs: the shipped TOMLs expand to the expected jobs; bad specs raise ConfigError."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from spmlbench.errors import ConfigError
from spmlbench.experiments.spec import available_experiments, load_experiment

# The 16 registry names of docs/methods.md, written out independently of the spec file.
SIXTEEN = {"bce", "an", "an_ls", "wan", "epr", "role", "focal", "asl", "hill", "splc",
           "ll_r", "ll_ct", "ll_cp", "em", "em_apl", "gr"}


def test_shipped_experiments_listed() -> None:
    assert {"table1", "ablation-gr", "grid-gr", "figures"} <= set(available_experiments())


def test_table1_expands_to_228_jobs() -> None:
    exp = load_experiment("table1")
    jobs = exp.jobs()
    assert len(jobs) == 19 * 4 * 3 == 228
    assert {j["loss"] for j in jobs} == SIXTEEN | {"smile", "vlpl", "aevlp"}
    assert {j["dataset"] for j in jobs} == {"voc", "coco", "nuswide", "cub"}
    assert {j["seed"] for j in jobs} == {0, 1, 2}
    assert all(j["mode"] == "linear" and j["hparams"] == {} for j in jobs)
    assert exp.version == 1


def test_table1_digits_preview_and_narrowing() -> None:
    exp = load_experiment("table1", datasets=["digits"], seeds=[5])
    jobs = exp.jobs()
    assert len(jobs) == 16  # SMILE and the CLIP losses are left out of the offline preview (preview = false)
    assert {(j["dataset"], j["seed"]) for j in jobs} == {("digits", 5)}
    assert len(load_experiment("table1", datasets=["voc", "digits"]).jobs()) == 19 * 3 + 16 * 3
    assert {j["mode"] for j in load_experiment("table1", mode="e2e").jobs()} == {"e2e"}


def test_table1_rejects_unknown_dataset() -> None:
    with pytest.raises(ConfigError, match="table1.*mnist"):
        load_experiment("table1", datasets=["mnist"])


def test_ablation_switches_one_component_at_a_time() -> None:
    exp = load_experiment("ablation-gr")
    jobs = exp.jobs()
    hps = [j["hparams"] for j in jobs if j["dataset"] == "voc" and j["seed"] == 0]
    assert {j["loss"] for j in jobs} == {"gr"}
    assert len(jobs) == len(exp.groups) * 4 * 3
    # exactly one default run; every other variant changes one component
    assert hps.count({}) == 1
    assert {"use_k": False} in hps and {"use_v": False} in hps
    assert {"schedule": False} in hps and {"lag": False} in hps
    assert {"q2": 1.0} in hps  # L2 as MAE
    assert any(h.get("q3", 1) < 1e-3 for h in hps) and any(h.get("q2", 1) < 1e-3 for h in hps)  # log-loss limits
    assert sum(g.baseline for g in exp.groups) == 1


def test_ablation_switch_names_are_gr_hyperparameters() -> None:
    losses = pytest.importorskip("spmlbench.losses")
    defaults = losses.loss_info("gr").defaults
    for job in load_experiment("ablation-gr", datasets=["voc"], seeds=[0]).jobs():
        assert set(job["hparams"]) <= set(defaults)


def test_grid_expands_figure2_shape() -> None:
    exp = load_experiment("grid-gr")
    jobs = exp.jobs()
    sizes = {g.name: math.prod(len(a.values) for a in g.axes) for g in exp.groups}
    assert sizes == {"q2-q3": 25, "wT-bT": 30, "muT-sigT": 20}
    assert len(jobs) == (25 + 30 + 20) * 3
    assert {j["dataset"] for j in jobs} == {"voc"}
    betas = {tuple(j["hparams"]["beta"]) for j in jobs if "beta" in j["hparams"]}
    assert (0.0, 10.0, -2.0, -8.0) in betas  # wT, bT set elementwise, w0 and b0 kept
    assert all(b[0] == 0.0 and b[2] == -2.0 for b in betas)
    alphas = {tuple(j["hparams"]["alpha"]) for j in jobs if "alpha" in j["hparams"]}
    assert (0.5, 2.0, 0.9, 0.25) in alphas and len(alphas) == 20
    q = {(j["hparams"]["q2"], j["hparams"]["q3"]) for j in jobs if "q2" in j["hparams"]}
    assert len(q) == 25


def test_figures_jobs_dump_predictions() -> None:
    jobs = load_experiment("figures").jobs()
    assert jobs and all(j["dump_predictions"] is True for j in jobs)
    assert {j["dataset"] for j in jobs} == {"voc", "coco"} and {j["loss"] for j in jobs} == {"an", "gr"}
    assert all("dump_predictions" not in j for j in load_experiment("table1").jobs())


def test_unknown_experiment_lists_available() -> None:
    with pytest.raises(ConfigError) as err:
        load_experiment("table9")
    assert "table9" in str(err.value) and "table1" in str(err.value) and "grid-gr" in str(err.value)


@pytest.mark.parametrize(
    "text, problem",
    [
        ("version = 2\nname='x'\ndatasets=['voc']\nseeds=[0]\n[[groups]]\nname='g'\nlosses=['an']\n", "version"),
        ("version = 1\nname='x'\ndatasets=['voc']\nseeds=[]\n[[groups]]\nname='g'\nlosses=['an']\n", "seeds"),
        ("version = 1\nname='x'\ndatasets=['voc']\nseeds=[0]\n", "groups"),
        ("version = 1\nname='x'\ndatasets=['voc']\nseeds=[0]\n[[groups]]\nname='g'\nlosses=['an']\nbogus=1\n", "bogus"),
        ("version = 1\nname='x'\ndatasets=['voc']\nseeds=[0]\n[[groups]]\nname='g'\nlosses=['an']\noverrides={optimizer='sgd'}\n", "optimizer"),
        ("version = 1\nname='x'\nmode='fast'\ndatasets=['voc']\nseeds=[0]\n[[groups]]\nname='g'\nlosses=['an']\n", "mode"),
        ("version = 1\nname = [\n", "TOML"),
    ],
)
def test_invalid_spec_names_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    msg = str(err.value)
    assert str(path) in msg and problem in msg and "\n" not in msg


def test_custom_spec_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(
        "version = 1\nname = 'mine'\ndatasets = ['voc', 'cub']\nseeds = [0, 1]\n"
        "[[groups]]\nname = 'g'\nlosses = ['an', 'gr']\nhparams = { q3 = 1.5 }\n"
        "overrides = { epochs = 4 }\ndatasets = ['cub']\n"
    )
    jobs = load_experiment(path).jobs()
    assert len(jobs) == 2 * 2
    assert all(j["dataset"] == "cub" and j["epochs"] == 4 and j["hparams"] == {"q3": 1.5} for j in jobs)
