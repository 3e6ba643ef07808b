"""``spmlbench pseudo-labels``: the CLIP image-class scores VLPL / AEVLP read, cached per dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from spmlbench.cli.app import app, console
from spmlbench.cli.help import COMPUTE, HOME_DEFAULT, OUTPUT, PIPELINE, SELECTION, choices

SOURCES = ("vlpl", "damp")


@app.command("pseudo-labels", rich_help_panel=PIPELINE)
def pseudo_labels(
    dataset: str = typer.Argument(..., help="Prepared dataset name (see 'spmlbench datasets')."),
    source: str = typer.Option(..., "--source", help="vlpl (loss vlpl: CLIP ViT-L/14-336, the image) or damp "
                               "(loss aevlp: CLIP ViT-B/16, the image and its grid tiles).", metavar=choices(SOURCES),
                               rich_help_panel=SELECTION),
    clip_model: Optional[str] = typer.Option(None, "--clip-model", help="open_clip model name.",
                                             show_default="spmlbench/data_manifests/pseudo_labels.toml", rich_help_panel=SELECTION),
    weights: Optional[str] = typer.Option(None, "--weights", help="CLIP weights: default (the manifest's open_clip "
                                          "tag), another open_clip tag, or none (random weights).",
                                          metavar="<default|TAG|none>", show_default="openai (digits: none)",
                                          rich_help_panel=SELECTION),
    clip_pretrained: Optional[str] = typer.Option(None, "--clip-pretrained", hidden=True,
                                                  help="old name of --weights"),
    device: str = typer.Option("auto", "--device", help="Where to run CLIP.", metavar=choices(("auto", "cpu", "cuda")),
                               rich_help_panel=COMPUTE),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per batch (x views x 2 flips).",
                                   rich_help_panel=COMPUTE),
    force: bool = typer.Option(False, "--force", help="Rebuild even when a cache exists (also one built with other "
                               "settings).", rich_help_panel=OUTPUT),
    home: Optional[Path] = typer.Option(None, "--home", help="Data home.", show_default=HOME_DEFAULT, rich_help_panel=OUTPUT),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar.", rich_help_panel=OUTPUT),
) -> None:
    """Score every training image of DATASET with CLIP into <home>/<ds>/pseudo/<source>.parquet (resumable)."""
    from spmlbench.cli.progress_view import progress_sink
    from spmlbench.data.registry import get_adapter
    from spmlbench.features.pseudo import build_pseudo
    from spmlbench.paths import labels_path
    from spmlbench.runtime import resolve_device

    pretrained = _weights(weights, clip_pretrained)
    if not labels_path(dataset, home).exists():
        get_adapter(dataset)  # unknown dataset -> ConfigError listing the known ones
        from spmlbench.errors import DataError

        raise DataError(f"{labels_path(dataset, home)}: dataset not prepared; run 'spmlbench prepare {dataset}' first")
    path = build_pseudo(dataset, source, home=home, device=resolve_device(device), model=clip_model,
                        pretrained=pretrained, batch_size=batch_size, force=force,
                        progress=progress_sink(not quiet))
    console.print(str(path), markup=False, highlight=False, soft_wrap=True)


def _weights(weights: str | None, clip_pretrained: str | None) -> str | None:
    """The open_clip weights tag from ``--weights`` (or its old name ``--clip-pretrained``); None: the manifest's."""
    from spmlbench.errors import ConfigError

    if weights is not None and clip_pretrained is not None and weights != clip_pretrained:
        raise ConfigError(f"--weights {weights} and --clip-pretrained {clip_pretrained}: the same option under two "
                          "names; give --weights only")
    tag = weights if weights is not None else clip_pretrained
    return None if tag == "default" else tag
