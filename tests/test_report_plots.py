"""Report figures: binning and curves against hand-derived values; PNGs written; missing inputs skipped."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from spmlbench.report import plots


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= 3.0 * 200  # ~3.5 in wide at >= 200 dpi (bbox tight trims a little)
        dpi = im.info.get("dpi", (0, 0))[0]
        assert dpi >= 199


def test_fn_counts_by_hand() -> None:
    probs = np.array([[0.005, 0.5, 0.999], [0.015, 0.505, 1.0]], dtype=np.float32)
    labels = np.array([[1, 0, 1], [0, 1, 0]], dtype=np.int8)
    observed = np.array([[1, 0, 0], [0, 0, 0]], dtype=np.int8)
    fn, tn = plots.fn_counts(probs, labels, observed)
    # unobserved entries: 0.5 TN (bin 50), 0.999 FN (bin 99), 0.015 TN (bin 1), 0.505 FN (bin 50), 1.0 TN (bin 99)
    assert fn.sum() == 2 and tn.sum() == 3 and len(fn) == 100
    assert (fn[50], tn[50], fn[99], tn[99], tn[1], fn[0], tn[0]) == (1, 1, 1, 1, 1, 0, 0)
    rate = plots.fn_rate(fn, tn)
    assert rate[50] == 0.5 and rate[99] == 0.5 and rate[1] == 0.0 and math.isnan(rate[0])


def test_score_groups_by_hand() -> None:
    d = {"probs": np.array([[0.9, 0.2, 0.7]]), "labels": np.array([[1, 0, 1]]), "observed": np.array([[1, 0, 0]])}
    g = plots.score_groups(d)
    assert g["observed positives"].tolist() == [0.9]
    assert g["missing positives"].tolist() == [0.7] and g["true negatives"].tolist() == [0.2]


def test_class_counts_by_hand() -> None:
    y = np.array([[1, 1, 0], [1, 0, 0], [0, 1, 1]])
    s = np.array([[1, 0, 0], [1, 0, 0], [0, 0, 1]])
    c = plots.class_counts(y, s)
    assert c["positives"].tolist() == [2, 2, 1]
    assert c["observed"].tolist() == [2, 0, 1] and c["missing"].tolist() == [0, 2, 0]


def test_gr_curves_follow_the_schedule() -> None:
    pytest.importorskip("spmlbench.losses")
    p = np.linspace(0.01, 0.99, 9)
    curves = plots.gr_curves(8, p, which=[1, 8])
    k1, v1 = curves[1]
    # epoch 1 of 8 (defaults, lagged w/b): w = 0, b = -2, mu = 0.5 + 0.3/8, sigma = 2 - 1.5/8
    assert np.allclose(k1, 1 / (1 + math.exp(2)), atol=1e-6)
    mu, sig = 0.5 + 0.3 / 8, 2 - 1.5 / 8
    assert np.allclose(v1, np.exp(-((p - mu) ** 2) / (2 * sig**2)), atol=1e-6)
    k8, v8 = curves[8]
    assert np.allclose(k8, 1 / (1 + np.exp(-(1.75 * p - 2))), atol=1e-6)  # w ends at 1.75 (lag)
    assert np.allclose(v8, np.exp(-((p - 0.8) ** 2) / (2 * 0.5**2)), atol=1e-6)


def test_gradient_curves_an_by_hand() -> None:
    pytest.importorskip("spmlbench.losses")
    p = np.linspace(0.05, 0.95, 7)
    curves, skipped = plots.gradient_curves(["an"], p)
    pos, unobs = curves["an"]
    # AN: d/dz -log(p) = -(1 - p); d/dz -log(1 - p) = p  (eps 1e-5 shifts these by < 1e-3)
    assert np.allclose(pos, 1 - p, atol=1e-3) and np.allclose(unobs, p, atol=1e-3)
    assert skipped == []


def test_draw_each_figure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    p = np.linspace(0.01, 0.99, 50)
    fn, tn = rng.integers(0, 5, 100), rng.integers(1, 50, 100)
    paths = [
        plots.plot_fn_rate({"epoch 1": plots.fn_rate(fn, tn)}, tmp_path / "a.png", title="t",
                           k_curves={"k": np.linspace(0.1, 0.3, 100)}),
        plots.plot_kv({1: (p, p), 2: (p**2, 1 - p)}, p, tmp_path / "b.png"),
        plots.plot_gradients({"an": (1 - p, p)}, p, tmp_path / "c.png"),
        plots.plot_class_counts(pd.DataFrame({"positives": [5, 3], "observed": [2, 1], "missing": [3, 2]}), 7,
                                tmp_path / "d.png", title="t"),
        plots.plot_scores({"x": rng.uniform(size=30), "y": np.array([])}, tmp_path / "e.png", title="t"),
        plots.plot_heatmap(pd.DataFrame({"a": [1, 1, 2, 2], "b": [3, 4, 3, 4], "mean": [1.0, np.nan, 3.0, 4.0]}),
                           "a", "b", tmp_path / "f.png", title="t"),
    ]
    for path in paths:
        assert_png(path)


def write_dumps(results: Path, job_id: str, epochs: int, rng: np.random.Generator) -> None:
    d = results / "dumps" / job_id
    d.mkdir(parents=True)
    labels = (rng.uniform(size=(40, 5)) < 0.3).astype(np.int8)
    observed = np.zeros_like(labels)
    observed[np.arange(40), labels.argmax(axis=1)] = labels.max(axis=1)
    for e in range(1, epochs + 1):
        probs = rng.uniform(size=labels.shape).astype(np.float32)
        np.savez(d / f"epoch_{e}.npz", probs=probs, labels=labels, observed=observed)


def test_make_plots_from_dumps_and_labels(tmp_path: Path, home: Path) -> None:
    pytest.importorskip("spmlbench.losses")
    from spmlbench.data.store import write_labels
    from spmlbench.paths import labels_path

    rng = np.random.default_rng(1)
    results = tmp_path / "res"
    write_dumps(results, "job_gr", 3, rng)
    y = (rng.uniform(size=(30, 4)) < 0.4).astype(np.int8)
    s = np.zeros_like(y)
    s[np.arange(30), y.argmax(axis=1)] = y.max(axis=1)
    write_labels(labels_path("voc"), [f"{i}.jpg" for i in range(30)], ["train"] * 20 + ["test"] * 10, y, s,
                 {"dataset": "voc", "class_names": list("abcd")})
    runs = pd.DataFrame([{"job_id": "job_gr", "dataset": "voc", "loss": "gr", "seed": 0, "test_map": 1.0}])
    written, notes = plots.make_plots(tmp_path / "plots", results_dir=results, runs=runs)
    names = {p.name for p in written}
    assert {"gr_kv.png", "gradients.png", "fn_rate_voc_gr.png", "scores_voc_gr.png", "class_counts_voc.png"} <= names
    for path in written:
        assert_png(path)
    assert not [n for n in notes if "k(p) overlay" in n]


def test_make_plots_skips_missing_inputs(tmp_path: Path, home: Path) -> None:
    runs = pd.DataFrame([{"job_id": "nojob", "dataset": "cub", "loss": "an", "seed": 0, "test_map": 1.0}])
    written, notes = plots.make_plots(tmp_path / "plots", results_dir=tmp_path, runs=runs)
    text = " ".join(notes)
    assert "no prediction dumps" in text and "class counts cub: skipped" in text
    assert not any("fn_rate" in p.name or "class_counts" in p.name for p in written)


def test_cli_report_plots(tmp_path: Path, cli, home: Path) -> None:
    import hashlib
    import json

    from test_report import cell, write_run

    recs = tmp_path / "res" / "records"
    recs.mkdir(parents=True)
    q = {"q2": 0.01, "q3": 1.0}
    cells = []
    for i, q3 in enumerate((0.25, 0.5)):
        hp = json.dumps({"q2": 0.01, "q3": q3})
        row = {"dataset": "voc", "loss": "gr", "hparams": hp, "mode": "linear", "seed": 0, "label_seed": 1200,
               "split_seed": 1200, "lr": 1e-4, "batch_size": 8,  # grid-gr's fixed point
                   "job_id": hashlib.sha256(hp.encode()).hexdigest()[:16], "experiment": "grid-gr",
               "status": "ok", "error": "", "test_map": 60.0 + i, "device": "cpu", "versions": "{}",
               "git_rev": "x", "features_sha256": "0" * 64, "created": "2026"}
        pd.DataFrame([row]).to_parquet(recs / f"{row['job_id']}.parquet")
        cells.append(cell(row, group="q2-q3", coords={"q2": 0.01, "q3": q3}))
    write_run(tmp_path / "res", cells, experiment="grid-gr", datasets=["voc"])
    assert q  # grid points (0.01, 0.25) and (0.01, 0.5) are filled
    out = tmp_path / "rep"
    res = cli("report", "--results", str(tmp_path / "res"), "--experiment", "grid-gr", "--format", "md",
              "--out", str(out), "--plots")
    assert res.code == 0, res.err
    heat = out / "plots" / "grid_q2-q3_voc.png"
    assert_png(heat)
    md = (out / "report.md").read_text()
    assert "plots/grid_q2-q3_voc.png" in md and "skipped" in md
