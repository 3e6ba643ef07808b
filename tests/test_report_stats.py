"""Report statistics against independent computations: scipy (t, Friedman), a hand-checked Holm example,
Demšar's table of q_α and scikit-posthocs' own Nemenyi test."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from spmlbench.report import build_report
from spmlbench.report.ranks import block_ranks, critical_difference, friedman, nemenyi, rank_test
from spmlbench.report.render import render_text, to_csv
from spmlbench.report.stats import holm, paired_comparison, paired_stats, verdict

sys.path.insert(0, str(Path(__file__).parent))
from test_report import record, write_records  # noqa: E402


def test_paired_stats_equal_scipy() -> None:
    a = [71.2, 69.8, 70.5, 72.0, 70.1]
    b = [70.0, 69.9, 69.1, 70.4, 69.5]
    got = paired_stats(a, b)
    ref = stats.ttest_rel(a, b)
    ci = ref.confidence_interval(0.95)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)
    assert got["ci_low"] == pytest.approx(ci.low, rel=1e-10) and got["ci_high"] == pytest.approx(ci.high, rel=1e-10)
    assert got["diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    one = paired_stats([1.0], [0.0])
    assert one["diff"] == 1.0 and np.isnan(one["p_value"]) and np.isnan(one["ci_low"])
    const = paired_stats([2.0, 3.0, 4.0], [1.0, 2.0, 3.0])  # every difference 1: no spread
    assert const == {"diff": 1.0, "ci_low": 1.0, "ci_high": 1.0, "p_value": 0.0}


def test_holm_hand_checked() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    got = holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is not part of the family; capped at 1
    got = holm([0.5, float("nan"), 0.2])
    assert np.isnan(got[1]) and got[[0, 2]] == pytest.approx([0.5, 0.4])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize(("diff", "p", "band", "n", "want"), [
    (1.2, 0.01, 0.5, 5, "better"),
    (-1.2, 0.01, 0.5, 5, "worse"),
    (0.3, 0.01, 0.5, 5, "better (within band)"),
    (1.2, 0.053, 0.5, 3, "unclear (|Δ| > band)"),  # the ROLE vs GR case: no longer "beyond noise"
    (0.2, 0.4, 0.5, 3, "no clear difference"),
    (2.0, float("nan"), 0.5, 1, "too few seeds"),
])
def test_verdict(diff: float, p: float, band: float, n: int, want: str) -> None:
    assert verdict(diff, p, band, n) == want


def _runs(values: dict[tuple[str, str, int], float]) -> pd.DataFrame:
    rows = [{"mode": "linear", "dataset": ds, "row": loss, "seed": s, "label_seed": 1, "split_seed": 1,
             "test_map": v} for (ds, loss, s), v in values.items()]
    return pd.DataFrame(rows)


def test_paired_comparison_family_order_and_verdict() -> None:
    gr = [70.0, 71.0, 72.0, 70.5]
    vals = {}
    for i, s in enumerate(range(4)):
        vals[("voc", "gr", s)] = gr[i]
        vals[("voc", "an", s)] = gr[i] - 2.0 - 0.1 * i  # clearly worse than GR
        vals[("voc", "epr", s)] = gr[i] + (0.4 if i % 2 else -0.3)  # noise
        vals[("cub", "gr", s)] = gr[i] - 10
        vals[("cub", "an", s)] = gr[i] - 10.6 + 0.05 * i
    out = paired_comparison(_runs(vals), "gr", lambda ds: 1.0 if ds == "cub" else 0.5, order=["cub", "voc"])
    assert list(zip(out["dataset"], out["other"])) == [("cub", "an"), ("voc", "an"), ("voc", "epr")]
    raw = [stats.ttest_rel([vals[(ds, "gr", s)] for s in range(4)], [vals[(ds, o, s)] for s in range(4)]).pvalue
           for ds, o in zip(out["dataset"], out["other"])]
    assert out["p_value"].to_numpy() == pytest.approx(raw, rel=1e-9)
    assert out["p_holm"].to_numpy() == pytest.approx(holm(raw))  # one family: the whole table
    by = out.set_index(["dataset", "other"])
    assert by.loc[("voc", "an"), "verdict"] == "better"
    assert by.loc[("cub", "an"), "verdict"] == "better (within band)"  # 0.5 < CUB's band of 1
    assert by.loc[("voc", "epr"), "verdict"] == "no clear difference"


def test_friedman_equals_scipy_with_ties() -> None:
    scores = pd.DataFrame([[70.0, 68.0, 68.0, 60.0], [55.0, 56.0, 54.0, 50.0], [40.0, 41.0, 39.0, 39.0],
                           [80.0, 75.0, 79.0, 70.0], [33.0, 33.0, 33.0, 30.0]], columns=list("abcd"))
    chi2, p = friedman(block_ranks(scores))
    ref = stats.friedmanchisquare(*[scores[c] for c in scores.columns])
    assert chi2 == pytest.approx(ref.statistic, rel=1e-10) and p == pytest.approx(ref.pvalue, rel=1e-10)
    assert block_ranks(scores).loc[0].tolist() == [1.0, 2.5, 2.5, 4.0]  # 1 = highest, ties averaged


def test_nemenyi_equals_scikit_posthocs() -> None:
    sp = pytest.importorskip("scikit_posthocs")
    rng = np.random.default_rng(3)
    scores = pd.DataFrame(rng.normal(60, 5, (8, 5)) + np.arange(5) * 2.0, columns=[f"m{i}" for i in range(5)])
    t = rank_test(scores, "datasets")
    ref = sp.posthoc_nemenyi_friedman(scores.to_numpy())  # ranks ascending there: |R_i − R_j| is the same
    ref.index = ref.columns = scores.columns
    got = t.nemenyi.loc[scores.columns, scores.columns]
    assert got.to_numpy() == pytest.approx(ref.to_numpy(), rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(("k", "q_alpha"), [(2, 1.960), (4, 2.569), (10, 3.164)])
def test_critical_difference_matches_demsar_table(k: int, q_alpha: float) -> None:
    n = 14  # Demšar 2006, table 5(a): q_0.05 for k classifiers
    assert critical_difference(k, n) == pytest.approx(q_alpha * np.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)


def test_nemenyi_p_is_alpha_at_the_critical_difference() -> None:
    k, n = 5, 10
    cd = critical_difference(k, n)
    p = nemenyi(pd.Series([1.0, 1.0 + cd, 3.0, 4.0, 5.0], index=list("abcde")), n)
    assert p.loc["a", "b"] == pytest.approx(0.05, abs=1e-6)


def test_rank_table_in_every_format(tmp_path: Path) -> None:
    means = {"voc": {"an": 80.0, "epr": 82.0, "gr": 85.0, "bce": 90.0},
             "coco": {"an": 60.0, "epr": 59.0, "gr": 63.0, "bce": 70.0},
             "cub": {"an": 18.0, "epr": 17.0, "gr": 19.0, "bce": 30.0}}
    recs = [record(ds, loss, s, m + 0.3 * s - 0.1 * (s * s)) for ds, row in means.items()
            for loss, m in row.items() for s in range(3)]
    out = write_records(tmp_path / "res", recs)
    rep = build_report(out)
    ranks = pd.read_csv(io.StringIO(to_csv(rep)["ranks"])).set_index("method")
    # GR first everywhere (rank 1); AN 3, 2, 2 -> 7/3; EPR 2, 3, 3 -> 8/3; BCE (upper bound) not ranked
    assert ranks.index.tolist() == ["gr", "an", "epr"]
    assert ranks["avg_rank_datasets"].tolist() == pytest.approx([1.0, 7 / 3, 8 / 3])
    assert ranks["n_datasets"].iloc[0] == 3 and ranks["n_seed_blocks"].iloc[0] == 9
    ref = stats.friedmanchisquare([85.0, 63.0, 19.0], [80.0, 60.0, 18.0], [82.0, 59.0, 17.0])
    assert ranks["friedman_chi2_datasets"].iloc[0] == pytest.approx(ref.statistic)
    assert ranks["friedman_p_datasets"].iloc[0] == pytest.approx(ref.pvalue)
    md = render_text(rep, "md")
    assert "## Average rank across datasets" in md and "| GR Loss | 1 | 1 | 1 | **1.00** |" in md
    assert f"χ² = {ref.statistic:.2f}" in md and "Not ranked (upper bound): Full labels, BCE." in md
    tex = render_text(rep, "latex")
    assert "Average rank across datasets" in tex and "\\textbf{1.00}" in tex
    assert "Average rank across datasets" in render_text(rep, "html")


def test_cli_console_shows_rank_table(tmp_path: Path, cli) -> None:
    recs = [record(ds, loss, s, 50.0 + i * 3 + s + (ds == "voc")) for ds in ("voc", "coco")
            for i, loss in enumerate(("an", "epr", "gr")) for s in range(3)]
    out = write_records(tmp_path / "res", recs)
    res = cli("report", "--results", str(out))
    assert res.code == 0, res.err
    assert "Average rank across datasets" in res.out and "Friedman over datasets (N = 2 blocks, k = 3" in res.out
    assert "verdict" in res.out and "p (Holm)" in res.out


@pytest.mark.slow
def test_cli_report_plots_cd_diagrams(tmp_path: Path, cli) -> None:
    from PIL import Image

    recs = [record(ds, loss, s, 50.0 + 2 * i + s + (ds == "voc") * (i == 0) * 9) for ds in ("voc", "coco", "cub")
            for i, loss in enumerate(("an", "epr", "gr", "bce")) for s in range(3)]
    res_dir = write_records(tmp_path / "res", recs)
    out = tmp_path / "rep"
    res = cli("report", "--results", str(res_dir), "--format", "md", "--out", str(out), "--plots")
    assert res.code == 0, res.err
    for name in ("cd_datasets_linear.png", "cd_seeds_linear.png"):
        with Image.open(out / "plots" / name) as im:
            assert im.format == "PNG" and im.size[0] >= 600
        assert f"plots/{name}" in (out / "report.md").read_text()
    # one dataset: no test over datasets (noted), the datasets x seeds diagram still drawn
    one = write_records(tmp_path / "one", [r for r in recs if r["dataset"] == "voc"])
    res = cli("report", "--results", str(one), "--format", "md", "--out", str(tmp_path / "rep1"), "--plots")
    assert res.code == 0, res.err
    md = (tmp_path / "rep1" / "report.md").read_text()
    assert "critical-difference diagram (linear, over datasets): skipped (1 block(s), 3 methods" in md
    assert (tmp_path / "rep1" / "plots" / "cd_seeds_linear.png").is_file()
    assert not (tmp_path / "rep1" / "plots" / "cd_datasets_linear.png").exists()
