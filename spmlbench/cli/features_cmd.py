"""``spmlbench features``: extract (or resume, or import from Zenodo) a dataset's backbone features."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from spmlbench.cli.app import app, console


@app.command()
def features(
    dataset: str = typer.Argument(..., help="Prepared dataset name (see 'spmlbench datasets')."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="Backbone name; default: the dataset's default (digits: pixels, else resnet50)."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per batch (default: 64 on CUDA, 16 on CPU)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Image decoding worker processes."),
    weights: str = typer.Option("default", "--weights", help="default (pretrained, from the torch hub cache) | none (random init)"),
    exact: bool = typer.Option(False, "--exact", help="fp32 on CUDA (no bf16 autocast, no channels_last, no TF32)."),
    force: bool = typer.Option(False, "--force", help="Recompute even when a valid cache exists."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=8, help="Override the backbone's input size (quick runs; recorded in the cache)."),
    zenodo: Optional[Path] = typer.Option(None, "--zenodo", help="Import the Zenodo 10162606 ResNet-50 .npy features from this folder instead of extracting."),
    home: Optional[Path] = typer.Option(None, "--home", help="Data home (default: $SPMLBENCH_HOME or the platform data dir)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
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
            progress=not quiet,
            force=force,
            image_size=image_size,
        )
    console.print(str(path), markup=False, highlight=False, soft_wrap=True)
