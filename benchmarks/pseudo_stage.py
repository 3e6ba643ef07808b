"""Time of the CLIP pseudo-label stage per 1,000 training images (``spmlbench pseudo-labels``).

Scores ``--images`` digits training images with a CLIP architecture (random weights: the time does not
depend on them) for one source and prints seconds per 1,000 images. Needs ``spmlbench prepare digits``
and the clip extra. Example: ``python benchmarks/pseudo_stage.py --source damp --model ViT-B-16-quickgelu``.
"""

from __future__ import annotations

import argparse
import time

import torch

from spmlbench.data.registry import image_root
from spmlbench.features import pseudo
from spmlbench.features.clip import load_clip, text_embeddings
from spmlbench.runtime import resolve_device


def main() -> None:
    """Parse options, score the images, print the rate."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", choices=pseudo.SOURCES, default="damp")
    ap.add_argument("--model", default="spml-tiny-clip")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    dev = resolve_device(args.device)
    images, names = pseudo._train_rows("digits", None)
    clip = load_clip(args.model, "none", dev)
    text = text_embeddings(clip, names, "a photo of a {}.", dev).cpu()
    grid = 4 if args.source == "damp" else 0
    rows = images[: args.images]
    pseudo._scores(clip, image_root("digits"), rows[: args.batch_size], args.source, grid, text, dev, args.batch_size)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    pseudo._scores(clip, image_root("digits"), rows, args.source, grid, text, dev, args.batch_size)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t0
    views = 2 * (1 + grid * grid)
    print(f"{args.source} {args.model} on {dev}: {len(rows)} images x {views} views in {dt:.1f} s = "
          f"{1000 * dt / len(rows):.0f} s per 1,000 images ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
