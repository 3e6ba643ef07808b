"""``spmlbench features``: extract (or resume, or import from Zenodo) a dataset's backbone features."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from spmlbench.cli.app import app, console
from spmlbench.cli.help import COMPUTE, HOME_DEFAULT, OUTPUT, PIPELINE, SELECTION, choices


@app.command(rich_help_panel=PIPELINE)
def features(
    dataset: str = typer.Argument(..., help="Prepared dataset name (see 'spmlbench datasets')."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone name.",
                                           show_default="the dataset's default: digits pixels, else resnet50",
                                           rich_help_panel=SELECTION),
    device: str = typer.Option("auto", "--device", help="Where to run the backbone.",
                               metavar=choices(("auto", "cpu", "cuda")), rich_help_panel=COMPUTE),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per batch.",
                                             show_default="64 on CUDA, 16 on CPU", rich_help_panel=COMPUTE),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Image decoding worker processes.",
                                          rich_help_panel=COMPUTE),
    weights: str = typer.Option("default", "--weights", help="default (pretrained, from the torch hub cache) | none (random init)",
                                metavar=choices(("default", "none")), rich_help_panel=SELECTION),
    exact: bool = typer.Option(False, "--exact", help="fp32 on CUDA (no bf16 autocast, no channels_last, no TF32).",
                               rich_help_panel=COMPUTE),
    force: bool = typer.Option(False, "--force", help="Recompute even when a valid cache exists.", rich_help_panel=OUTPUT),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=8, help="Override the backbone's input size (quick runs; recorded in the cache).",
                                             rich_help_panel=SELECTION),
    zenodo: Optional[Path] = typer.Option(None, "--zenodo", help="Import the Zenodo 10162606 ResNet-50 .npy features from this folder instead of extracting.",
                                          rich_help_panel=SELECTION),
    home: Optional[Path] = typer.Option(None, "--home", help="Data home.", show_default=HOME_DEFAULT, rich_help_panel=OUTPUT),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar.", rich_help_panel=OUTPUT),
    maps: bool = typer.Option(False, "--maps", help="Also cache the layer4 feature maps (float16, memory-mapped; "
                              "BoostLU in linear mode): <ds>/features/<backbone>-maps.npy.", rich_help_panel=OUTPUT),
    verify: bool = typer.Option(False, "--verify", help="Hash an existing maps cache whole before reusing it "
                                "(by default: whole up to 1 GiB, sampled blocks above).", rich_help_panel=OUTPUT),
) -> None:
    """Compute backbone features for every image of DATASET into <home>/<ds>/features/<backbone>.parquet."""
    from spmlbench.data.registry import get_adapter
    from spmlbench.paths import labels_path

    if not labels_path(dataset, home).exists():  # a name that is not plain fails here (ConfigError)
        get_adapter(dataset)  # unknown dataset -> ConfigError listing the known ones; known -> "not prepared" below
    if zenodo is not None:
        from spmlbench.features.zenodo import import_zenodo_features

        path = import_zenodo_features(dataset, zenodo, home=home)
    else:
        from spmlbench.cli.progress_view import progress_sink
        from spmlbench.features.extract import extract_features

        path = extract_features(
            dataset,
            backbone,
            home=home,
            device=device,
            batch_size=batch_size,
            workers=workers,
            weights=weights,
            exact=exact,
            progress=progress_sink(not quiet),
            force=force,
            image_size=image_size,
        )
    console.print(str(path), markup=False, highlight=False, soft_wrap=True)
    if maps:
        from spmlbench.cli.progress_view import progress_sink
        from spmlbench.features.maps import extract_maps
        from spmlbench.runtime import resolve_device

        from spmlbench.features.extract import default_backbone

        bb = backbone or default_backbone(dataset)
        out = extract_maps(dataset, bb, home=home, device=resolve_device(device), weights=weights,
                           image_size=image_size, batch_size=batch_size or 16, progress=progress_sink(not quiet),
                           force=force, verify=verify)
        console.print(str(out), markup=False, highlight=False, soft_wrap=True)
