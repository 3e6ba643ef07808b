"""``spmlbench pin-zenodo``: pin a manifest's Zenodo files from the record's API."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from spmlbench.cli.app import app, console
from spmlbench.cli.help import HELPERS


@app.command("pin-zenodo", rich_help_panel=HELPERS)
def pin_zenodo(
    dataset: Annotated[str, typer.Argument(help="Dataset whose manifest lists Zenodo files (nuswide).")] = "nuswide",
    api: Annotated[Optional[str], typer.Option(help="Record API URL (default: the manifest's extra.zenodo_api).")] = None,
    manifest_dir: Annotated[Optional[Path], typer.Option(help="Manifest folder (default: spmlbench/data_manifests/).")] = None,
) -> None:
    """Read sizes and md5 of the dataset's Zenodo files from the record API and write them into its manifest."""
    from spmlbench.data.zenodo_pin import pin_manifest

    pinned = pin_manifest(dataset, api_url=api, manifest_dir=manifest_dir)
    for f in pinned.values():
        console.print(f"{f.key}: size {f.size}, md5 {f.md5}")
    console.print(f"pinned {len(pinned)} file(s) in the {dataset} manifest")
