"""``spmlbench prepare`` and ``spmlbench datasets``: thin wrappers over spmlbench.data."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from spmlbench.cli.app import app, console, err_console
from spmlbench.cli.help import HELPERS, HOME_DEFAULT, OUTPUT, PIPELINE, PROTOCOL, PROTOCOL_SEED, SOURCE, choices
from spmlbench.errors import ConfigError


def _confirm(yes: bool) -> Callable[[str], bool]:
    """Show the terms; accept with --yes, else ask on stdin (no stdin counts as no)."""

    def ask(prompt: str) -> bool:
        console.print(prompt, markup=False, highlight=False, soft_wrap=True)
        if yes:
            console.print("accepted with --yes")
            return True
        console.print("[y/N] ", end="", markup=False)
        try:
            line = sys.stdin.readline() if sys.stdin is not None else ""
        except (OSError, ValueError):
            line = ""
        if not line:
            console.print()
            err_console.print("no input available to answer; pass --yes to accept the terms in scripts")
            return False
        return line.strip().lower() in ("y", "yes")

    return ask


@app.command(rich_help_panel=PIPELINE)
def prepare(
    dataset: str = typer.Argument("digits", help="voc, coco, nuswide, cub or digits (offline demo)."),
    source: Optional[Path] = typer.Option(  # noqa: UP007 - typer needs Optional on older Pythons
        None, "--from", help="A local archive (verified by checksum) or an already-extracted folder.",
        rich_help_panel=SOURCE,
    ),
    mirror: Optional[str] = typer.Option(  # noqa: UP007
        None, "--mirror", help="URL tried first: the file itself, or a folder URL (ending in /) holding the files.",
        rich_help_panel=SOURCE,
    ),
    home: Optional[Path] = typer.Option(None, "--home", help="Data home.", show_default=HOME_DEFAULT,  # noqa: UP007
                                        rich_help_panel=OUTPUT),
    yes: bool = typer.Option(False, "--yes", "-y", help="Accept the terms of use without asking (scripts).",
                             rich_help_panel=SOURCE),
    label_seed: int = typer.Option(PROTOCOL_SEED, "--label-seed", help="Seed of the single-positive draw (protocol: 1200).",
                                    rich_help_panel=PROTOCOL),
    features: str = typer.Option("default", "--features", help="default|extract (the dataset's default backbone), zenodo, none.",
                                  metavar=choices(("default", "extract", "zenodo", "none")), rich_help_panel=OUTPUT),
    drop_unlabeled: bool = typer.Option(
        False, "--drop-unlabeled", help="Drop rows without any label (a named protocol deviation).", rich_help_panel=PROTOCOL
    ),
    pseudo_labels: Optional[str] = typer.Option(  # noqa: UP007
        None, "--pseudo-labels", help="Also build the CLIP pseudo-label caches (vlpl, damp or vlpl,damp; the clip "
        "extra), as 'spmlbench pseudo-labels' does.", metavar="<vlpl|damp|vlpl,damp>", rich_help_panel=OUTPUT),
) -> None:
    """Download (or take --from), format, sample single positives and split one dataset."""
    from spmlbench.data.prepare import PrepareOptions
    from spmlbench.data.registry import get_adapter
    from spmlbench.data.staging import prepare_lock
    from spmlbench.features.modes import FEATURE_MODES
    from spmlbench.paths import data_home

    if features not in FEATURE_MODES:
        raise ConfigError(f"--features {features!r}: unknown mode; choose one of {', '.join(FEATURE_MODES)}")
    if not 0 <= label_seed < 2**32:
        raise ConfigError(f"--label-seed {label_seed}: must be in [0, 2**32); pick another seed")
    from spmlbench.features.pseudo import SOURCES

    sources = [t.strip() for t in (pseudo_labels or "").split(",") if t.strip()]
    for src in sources:
        if src not in SOURCES:
            raise ConfigError(f"--pseudo-labels {src!r}: unknown source; choose from {', '.join(SOURCES)}")
    opts = PrepareOptions(source=source, mirror=mirror, label_seed=label_seed, drop_unlabeled=drop_unlabeled)
    get_adapter(dataset)  # an unknown or not plain name fails before the lock file is named after it
    say = lambda msg: console.print(msg, markup=False, highlight=False)  # noqa: E731
    with prepare_lock(data_home(home), dataset, say):  # a second prepare of the dataset waits for the first
        _prepare(dataset, opts, home, yes, features, source, sources)


def _prepare(dataset: str, opts: Any, home: Optional[Path], yes: bool, features: str, source: Optional[Path],
             sources: list[str]) -> None:
    """prepare's work, under the dataset's prepare lock."""
    from spmlbench.cli.progress_view import progress_sink
    from spmlbench.data.prepare import prepare_dataset
    from spmlbench.features.modes import run_features
    from spmlbench.features.pseudo import build_pseudo

    result = prepare_dataset(
        dataset,
        opts,
        home=home,
        confirm=_confirm(yes),
        say=lambda msg: console.print(msg, markup=False, highlight=False),
        warn=lambda msg: err_console.print(f"[bold red]WARNING[/bold red] {msg}", highlight=False),
        progress=progress_sink(),
    )
    if features != "none":
        path = run_features(dataset, features, home=home, source=source, progress=progress_sink())
        if path is not None:
            console.print(f"{dataset}: features in {path}", markup=False, highlight=False)
    for src in sources:
        from spmlbench.runtime import resolve_device

        path = build_pseudo(dataset, src, home=home, device=resolve_device("auto"), progress=progress_sink())
        console.print(f"{dataset}: {src} pseudo-label scores in {path}", markup=False, highlight=False)
    if result.count_mismatches:
        err_console.print(
            f"[bold red]{dataset}: {len(result.count_mismatches)} count(s) differ from the manifest; see above[/bold red]"
        )


def _fmt(value: object) -> str:
    return "-" if value is None else str(value)


@app.command(rich_help_panel=HELPERS)
def datasets(
    home: Optional[Path] = typer.Option(None, "--home", help="Data home.", show_default=HOME_DEFAULT),  # noqa: UP007
) -> None:
    """List every dataset: prepared or not, where, rows per split, classes, positives, feature caches."""
    from spmlbench.data.summary import all_statuses

    table = Table(title="spmlbench datasets")
    for col in ("dataset", "prepared", "path", "train", "val", "test", "classes", "avg pos", "features"):
        table.add_column(col, no_wrap=col in ("dataset", "path"))
    for st in all_statuses(home):
        counts = st.counts or {}
        prepared = "yes" if st.prepared else ("no: " + st.problem if st.problem else "no")
        table.add_row(
            st.name,
            prepared,
            str(st.path),
            _fmt(counts.get("train")),
            _fmt(counts.get("val")),
            _fmt(counts.get("test")),
            _fmt(st.num_classes),
            "-" if st.avg_positives is None else f"{st.avg_positives:.2f}",
            ", ".join(st.features) or "-",
        )
    console.print(table)
