"""Report figures (matplotlib Agg, PNG, ~3.5 in wide at 300 dpi): the GR paper's Figures 1-5 and grid heatmaps.

Prediction dumps (written by the runner for jobs with ``dump_predictions = true``):
``<results>/dumps/<job_id>/epoch_<e>.npz`` (e 1-based) with arrays ``probs`` (N, C) float32
sigmoid outputs on the val split, ``labels`` (N, C) int8 clean labels and ``observed`` (N, C)
int8 observed labels of the same rows. A figure whose inputs are missing is skipped with a note.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from spmlbench.report.figure_style import RC as _RC
from spmlbench.report.figure_style import WIDTH_IN, plt
from spmlbench.report.figure_style import figure as _figure
from spmlbench.report.figure_style import save_figure as _save

BIN_EDGES = np.linspace(0.0, 1.0, 101)  # 100 fixed probability bins


# ---------- prediction dumps ----------

def dump_files(results_dir: Path, job_id: str) -> dict[int, Path]:
    """Epoch -> dump file of one job (empty when the job wrote none)."""
    d = Path(results_dir) / "dumps" / str(job_id)
    out = {}
    for f in d.glob("epoch_*.npz") if d.is_dir() else []:
        m = re.fullmatch(r"epoch_(\d+)\.npz", f.name)
        if m:
            out[int(m.group(1))] = f
    return dict(sorted(out.items()))


def load_dump(path: Path) -> dict[str, np.ndarray]:
    """Read one dump: probs (float32), labels and observed (int8), checked for equal shapes."""
    with np.load(path) as z:
        d = {k: z[k] for k in ("probs", "labels", "observed")}
    if not d["probs"].shape == d["labels"].shape == d["observed"].shape:
        raise ValueError(f"{path}: probs, labels and observed shapes differ")
    return d


def fn_counts(probs: np.ndarray, labels: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per probability bin (100 fixed bins on [0, 1]) over unobserved entries: FN (clean positive) and TN counts."""
    unobs = observed == 0
    fn, _ = np.histogram(probs[unobs & (labels == 1)], bins=BIN_EDGES)
    tn, _ = np.histogram(probs[unobs & (labels == 0)], bins=BIN_EDGES)
    return fn, tn


def fn_rate(fn: np.ndarray, tn: np.ndarray) -> np.ndarray:
    """FN / (FN + TN) per bin; NaN where a bin holds no unobserved entry."""
    total = fn + tn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, fn / np.maximum(total, 1), np.nan)


# ---------- GR curves and gradients (from the loss registry) ----------

def gr_curves(epochs: int, p: np.ndarray, hparams: dict[str, Any] | None = None,
              which: Sequence[int] | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """k(p) and v(p) of the GR loss at each epoch (1-based, after ``start_epoch(e, epochs)``)."""
    import torch

    from spmlbench.losses import build_loss

    loss = build_loss("gr", num_classes=2, num_train=1, **(hparams or {}))
    pt = torch.as_tensor(p, dtype=torch.float32)
    out = {}
    for e in which or range(1, epochs + 1):
        loss.start_epoch(e, epochs)
        with torch.no_grad():
            out[e] = (loss.k(pt).cpu().numpy().astype(float), loss.v(pt).cpu().numpy().astype(float))
    return out


def _entry_gradients(name: str, z: np.ndarray, obs: list[float], dataset: str, epochs: int, epoch: int) -> np.ndarray:
    """|dloss/dz| of entry (row, class 0), one row per z, ``len(obs)`` classes (others at z = 0); mean undone."""
    import torch

    from spmlbench.losses import build_loss

    b, c = len(z), len(obs)
    loss = build_loss(name, num_classes=c, num_train=b, dataset=dataset)
    observed = torch.tensor([obs] * b)
    if hasattr(loss, "init_state"):  # ROLE's label matrix
        loss.init_state(observed, 0)
    loss.start_epoch(epoch, epochs)
    logits = torch.zeros(b, c)
    logits[:, 0] = torch.as_tensor(z, dtype=torch.float32)
    logits.requires_grad_(True)
    value = loss(logits, observed, torch.arange(b))
    (g,) = torch.autograd.grad(value, logits)
    return np.abs(g[:, 0].numpy().astype(float)) * b * c


def gradient_curves(losses: Sequence[str], p: np.ndarray, *, dataset: str = "voc", num_classes: int = 20,
                    epochs: int = 10, epoch: int = 1) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """|dloss/dz| per entry for an observed positive and an unobserved entry, per loss, at ``epoch``.

    Reference: one row of ``num_classes`` (VOC: 20) classes: the entry under study (class 0), a
    second class that carries the row's single positive when the entry is unobserved, the rest
    unobserved at z = 0; the mean over the row's entries is undone.
    All p values are evaluated as one batch of such rows (mean over B x C undone) and checked
    against the one-row reference at three points; a loss whose rows interact (a batch-level
    regulariser) falls back to one row per point. Losses that fail are named in the second value.
    """
    z = np.log(p) - np.log1p(-p)
    probe = [0, len(z) // 2, len(z) - 1]
    out, skipped = {}, []
    for name in losses:
        try:
            curves = []
            pos = [1.0] + [0.0] * (num_classes - 1)
            for obs in (pos, [0.0, 1.0] + [0.0] * (num_classes - 2)):
                batch = _entry_gradients(name, z, obs, dataset, epochs, epoch)
                single = np.array([_entry_gradients(name, z[[i]], obs, dataset, epochs, epoch)[0] for i in probe])
                if not np.allclose(batch[probe], single, rtol=1e-4, atol=1e-7):
                    batch = np.array([_entry_gradients(name, z[[i]], obs, dataset, epochs, epoch)[0]
                                      for i in range(len(z))])
                curves.append(batch)
            out[name] = (curves[0], curves[1])
        except Exception as exc:  # a loss that cannot run on this toy input is named, not fatal
            skipped.append(f"{name} ({type(exc).__name__}: {exc})")
    return out, skipped


# ---------- drawing ----------

def plot_fn_rate(rates: dict[str, np.ndarray], path: Path, *, title: str,
                 k_curves: dict[str, np.ndarray] | None = None) -> Path:
    """Figure 5: FN/(FN+TN) per probability bin (one line per label) with k(p) curves overlaid."""
    fig, axes = _figure()
    ax = axes[0, 0]
    centres = (BIN_EDGES[:-1] + BIN_EDGES[1:]) / 2
    with plt.rc_context(_RC):
        for label, r in rates.items():
            ax.plot(centres, r, marker=".", markersize=2, label=label)
        for label, k in (k_curves or {}).items():
            ax.plot(centres, k, linestyle="--", label=label)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="predicted probability p", ylabel="FN / (FN + TN)", title=title)
        ax.legend(frameon=False)
    return _save(fig, path)


def plot_kv(curves: dict[int, tuple[np.ndarray, np.ndarray]], p: np.ndarray, path: Path) -> Path:
    """k(p) and v(p) per epoch, side by side."""
    fig, axes = _figure(height=1.8, ncols=2)
    cmap = plt.get_cmap("viridis")
    n = max(len(curves) - 1, 1)
    with plt.rc_context(_RC):
        for i, (e, (k, v)) in enumerate(curves.items()):
            axes[0, 0].plot(p, k, color=cmap(i / n), label=f"e={e}")
            axes[0, 1].plot(p, v, color=cmap(i / n), label=f"e={e}")
        axes[0, 0].set(xlabel="p", ylabel="k(p)", title="GR pseudo-label k(p)", xlim=(0, 1))
        axes[0, 1].set(xlabel="p", ylabel="v(p)", title="GR weight v(p)", xlim=(0, 1))
        axes[0, 1].legend(frameon=False, fontsize=5)
        fig.subplots_adjust(wspace=0.45)  # room for the right panel's y label
    return _save(fig, path)


def plot_gradients(curves: dict[str, tuple[np.ndarray, np.ndarray]], p: np.ndarray, path: Path) -> Path:
    """Figure 1: |dloss/dz| against p, observed positives (left) and unobserved entries (right)."""
    with plt.rc_context(_RC):
        fig, axes = plt.subplots(1, 2, figsize=(WIDTH_IN, 2.9), sharey=True, squeeze=False)
        colors = plt.get_cmap("tab20").colors
        styles = ("-", "--", ":")
        for i, (name, (pos, unobs)) in enumerate(curves.items()):
            kw = {"color": colors[i % len(colors)], "linestyle": styles[(i // len(colors)) % 3] if i < 20 else "-."}
            if name == "gr":
                kw.update(color="k", linewidth=1.6)
            axes[0, 0].plot(p, pos, label=name, **kw)
            axes[0, 1].plot(p, unobs, **kw)
        axes[0, 0].set(xlabel="p", ylabel="|dl/dz|", title="observed positive", xlim=(0, 1))
        axes[0, 1].set(xlabel="p", title="unobserved", xlim=(0, 1))
        fig.legend(loc="lower center", ncol=6, frameon=False, fontsize=5, bbox_to_anchor=(0.5, -0.02))
        fig.subplots_adjust(bottom=0.32, wspace=0.15)
    return _save(fig, path)


def class_counts(labels: np.ndarray, observed: np.ndarray) -> pd.DataFrame:
    """Per class: positives (clean), observed positives, missing positives (= positives - observed)."""
    pos = labels.astype(np.int64).sum(axis=0)
    obs = ((observed == 1) & (labels == 1)).astype(np.int64).sum(axis=0)
    return pd.DataFrame({"positives": pos, "observed": obs, "missing": pos - obs})


def plot_class_counts(counts: pd.DataFrame, n_samples: int, path: Path, *, title: str) -> Path:
    """Figure 4: per class (sorted by positives) observed + missing positives, with the number of samples."""
    c = counts.sort_values("positives", ascending=False).reset_index(drop=True)
    fig, axes = _figure(height=2.0)
    ax = axes[0, 0]
    x = np.arange(len(c))
    with plt.rc_context(_RC):
        ax.bar(x, c["observed"], width=1.0, label="observed positives")
        ax.bar(x, c["missing"], bottom=c["observed"], width=1.0, label="missing positives")
        ax.axhline(n_samples, color="k", linestyle=":", linewidth=0.8, label=f"samples ({n_samples})")
        ax.set(xlabel="class (sorted by positives)", ylabel="count", title=title, xlim=(-0.5, len(c) - 0.5))
        ax.legend(frameon=False)
    return _save(fig, path)


def score_groups(d: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scores of observed positives, missing positives (clean 1, unobserved) and true negatives."""
    p, y, s = d["probs"], d["labels"], d["observed"]
    return {
        "observed positives": p[s == 1],
        "missing positives": p[(s == 0) & (y == 1)],
        "true negatives": p[(s == 0) & (y == 0)],
    }


def plot_scores(groups: dict[str, np.ndarray], path: Path, *, title: str) -> Path:
    """Figure 3: density histograms of the three score groups on fixed bins."""
    fig, axes = _figure()
    ax = axes[0, 0]
    edges = np.linspace(0, 1, 51)
    with plt.rc_context(_RC):
        for label, v in groups.items():
            if len(v):
                ax.hist(v, bins=edges, density=True, histtype="step", label=f"{label} ({len(v)})")
        ax.set(xlabel="predicted probability p", ylabel="density", title=title, xlim=(0, 1))
        ax.set_yscale("log")
        ax.legend(frameon=False)
    return _save(fig, path)


def plot_heatmap(frame: pd.DataFrame, rows: str, cols: str, path: Path, *, title: str) -> Path:
    """Grid heatmap of mean mAP (``rows`` x ``cols`` axis names); missing points stay blank."""
    piv = frame.pivot(index=rows, columns=cols, values="mean")
    fig, axes = _figure(height=2.6)
    ax = axes[0, 0]
    data = piv.to_numpy(dtype=float)
    with plt.rc_context(_RC):
        im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto", origin="lower")
        ax.set_xticks(range(len(piv.columns)), [str(c) for c in piv.columns])
        ax.set_yticks(range(len(piv.index)), [str(r) for r in piv.index])
        ax.set(xlabel=cols, ylabel=rows, title=title)
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                if not math.isnan(data[i, j]):
                    r, g, b, _ = im.cmap(im.norm(data[i, j]))
                    ink = "k" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "w"  # readable on light and dark cells
                    ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center", fontsize=5, color=ink)
        fig.colorbar(im, ax=ax, label="test mAP (%)")
    return _save(fig, path)


# ---------- orchestration ----------

def _attempt(notes: list[str], what: str, fn: Callable[[], list[Path]]) -> list[Path]:
    try:
        return fn()
    except ImportError as exc:
        notes.append(f"{what}: skipped ({exc.name or exc} not available)")
    except Exception as exc:  # a figure's missing input must not stop the report
        notes.append(f"{what}: skipped ({type(exc).__name__}: {exc})")
    return []


def _dumped_jobs(results_dir: Path, runs: pd.DataFrame) -> pd.DataFrame:
    if runs.empty or "job_id" not in runs:
        return pd.DataFrame()
    has = runs["job_id"].map(lambda j: bool(dump_files(results_dir, j)))
    return runs[has]


def make_plots(out: Path, *, results_dir: Path, runs: pd.DataFrame,
               experiment: Any = None, settings: dict[str, Any] | None = None,
               home: Any = None) -> tuple[list[Path], list[str]]:
    """Write every figure whose inputs exist into ``out``; return (written paths, notes on skipped figures)."""
    settings = settings or {}
    notes: list[str] = []
    written: list[Path] = []
    p = np.linspace(0.005, 0.995, 199)

    written += _attempt(notes, "k(p), v(p) per epoch", lambda: [plot_kv(gr_curves(8, p), p, out / "gr_kv.png")])

    def gradients() -> list[Path]:
        from spmlbench.experiments.spec import load_experiment

        names = list(load_experiment("table1").groups[0].losses)
        curves, skipped = gradient_curves(names, np.linspace(0.01, 0.99, 61))
        if skipped:
            notes.append("gradient curves: skipped " + "; ".join(skipped))
        if not curves:
            raise ValueError("no loss could be evaluated")
        return [plot_gradients(curves, np.linspace(0.01, 0.99, 61), out / "gradients.png")]

    written += _attempt(notes, "|dl/dz| against p", gradients)

    dumped = _dumped_jobs(results_dir, runs)
    if dumped.empty:
        notes.append("FN/(FN+TN) and score distributions: skipped (no prediction dumps among this report's runs; "
                     "run 'spmlbench run --experiment figures', then 'spmlbench report --experiment figures --plots')")
    for (ds, loss), sub in dumped.groupby(["dataset", "loss"], sort=True) if not dumped.empty else []:
        def fig5(ds: str = ds, loss: str = loss, sub: pd.DataFrame = sub) -> list[Path]:
            first, last = {}, {}
            epochs = 0
            for job in sub["job_id"]:
                files = dump_files(results_dir, job)
                epochs = max(epochs, max(files))
                for store, e in ((first, min(files)), (last, max(files))):
                    fn, tn = fn_counts(**load_dump(files[e]))
                    prev = store.get("c", (0, 0))
                    store["c"] = (prev[0] + fn, prev[1] + tn)
                    store["e"] = e
            rates = {f"epoch {first['e']}": fn_rate(*first["c"]), f"epoch {last['e']}": fn_rate(*last["c"])}
            k_curves = {}
            if loss == "gr":
                centres = (BIN_EDGES[:-1] + BIN_EDGES[1:]) / 2
                try:
                    kv = gr_curves(epochs, centres, which=[first["e"], last["e"]])
                    k_curves = {f"k(p), epoch {e}": kv[e][0] for e in kv}
                except Exception as exc:  # overlay is optional
                    notes.append(f"k(p) overlay on {ds}: skipped ({type(exc).__name__}: {exc})")
            return [plot_fn_rate(rates, out / f"fn_rate_{ds}_{loss}.png", title=f"{loss} on {ds}", k_curves=k_curves)]

        def fig3(ds: str = ds, loss: str = loss, sub: pd.DataFrame = sub) -> list[Path]:
            files = dump_files(results_dir, sub["job_id"].iloc[0])
            e = max(files)
            return [plot_scores(score_groups(load_dump(files[e])), out / f"scores_{ds}_{loss}.png",
                                title=f"{loss} on {ds}, epoch {e}")]

        written += _attempt(notes, f"FN/(FN+TN) {ds}/{loss}", fig5)
        written += _attempt(notes, f"score distributions {ds}/{loss}", fig3)

    datasets = list(dict.fromkeys(list(runs["dataset"]) if not runs.empty else []))
    if experiment is not None:
        datasets = list(dict.fromkeys([*experiment.datasets, *datasets]))
    for ds in datasets:
        def fig4(ds: str = ds) -> list[Path]:
            from spmlbench.data.store import label_matrix, load_labels

            df = load_labels(ds, home)
            y, s = label_matrix(df, "labels", "train"), label_matrix(df, "observed", "train")
            return [plot_class_counts(class_counts(y, s), len(y), out / f"class_counts_{ds}.png",
                                      title=f"{ds}: train positives per class")]

        written += _attempt(notes, f"class counts {ds}", fig4)

    if experiment is not None:
        from spmlbench.report.tables import grid_frame

        for g in experiment.groups:
            if len(g.axes) != 2:
                continue
            for ds in experiment.group_datasets(g):
                frame = grid_frame(runs, g, ds)
                if frame["mean"].notna().any():
                    written.append(plot_heatmap(frame, g.axes[0].name, g.axes[1].name,
                                                out / f"grid_{g.name}_{ds}.png", title=f"GR {g.name} on {ds}"))
                else:
                    notes.append(f"heatmap {g.name} on {ds}: skipped (no results)")

    def results() -> list[Path]:
        from spmlbench.report.load import load_reference
        from spmlbench.report.results_plot import plot_results

        if runs.empty:
            raise ValueError("no results")
        return plot_results(runs, load_reference(), settings, out)

    written += _attempt(notes, "results chart", results)

    def cd() -> list[Path]:
        from spmlbench.report.cd_plot import cd_figures

        return cd_figures(out, runs, settings, notes, experiment)

    written += _attempt(notes, "critical-difference diagrams", cd)
    return written, notes
