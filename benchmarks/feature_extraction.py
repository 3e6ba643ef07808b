"""Feature extraction throughput: spmlbench's extractor against a plain fp32 loop, same run, same images.

The plain loop is the reference style: PIL open + ``convert("RGB")``, torchvision
``Resize((S, S))``/``ToTensor``/``Normalize`` in the main process, batches of 8, fp32 forward
(PyTorch defaults otherwise). Ours: ``extract_features`` (decode workers, uint8 pinned batches,
normalisation on the device, bf16 autocast + channels_last on CUDA, Parquet cache written).
Both are timed end to end (model build included) after a warm-up on a few images.

On CUDA the compute bound is printed beside the measured rate: peak dense bf16 FLOP/s divided by
the FLOPs per image, 2 x the backbone's multiply-accumulates (torchvision's ``_ops``: 4.09 G
for ResNet-50 at 224 px, i.e. about 16.4 GMACs = 33 GFLOPs at 448 px).

Synthetic JPEGs (VOC-like 500 x 375, smooth gradients plus noise) stand in for a dataset; the
default weights are ``none`` because this machine has no network (the arithmetic is the same).

    python benchmarks/feature_extraction.py                       # CPU (and CUDA when present)
    python benchmarks/feature_extraction.py --device cuda --cuda-images 4096 --peak-tflops 989
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spmlbench.data.store import write_labels
from spmlbench.features.backbones import get_backbone, weights_enum
from spmlbench.features.extract import extract_features

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets), by a substring of the device name.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}


def make_images(home: Path, name: str, n: int, size: tuple[int, int], unique: int = 48) -> list[str]:
    """Write ``n`` JPEGs (``unique`` distinct contents, repeated) and a labels.parquet for them."""
    root = home / name / "images"
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w, h = size
    blobs = []
    for k in range(min(unique, n)):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([xx / w * 255, yy / h * 255, (xx + yy) / (w + h) * 255], axis=-1)
        img = np.clip(base * rng.uniform(0.5, 1.0) + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        blobs.append(buf.getvalue())
    images = [f"img{i:06d}.jpg" for i in range(n)]
    for i, image in enumerate(images):
        (root / image).write_bytes(blobs[i % len(blobs)])
    y = np.zeros((n, 2), dtype=np.int8)
    y[:, 0] = 1
    write_labels(home / name / "labels.parquet", images, ["train"] * n, y, y, {"dataset": name})
    return images


def plain_loop(root: Path, images: list[str], backbone: str, weights: str, size: int, device: torch.device) -> float:
    """The reference-style loop: returns seconds for all images (model build included)."""
    from torchvision import transforms

    t0 = time.perf_counter()
    model = get_backbone(backbone).build(weights).to(device)
    tf = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    out = []
    with torch.no_grad():
        for b in range(0, len(images), 8):
            batch = []
            for image in images[b : b + 8]:
                with Image.open(root / image) as img:
                    batch.append(tf(img.convert("RGB")))
            out.append(model(torch.stack(batch).to(device)).cpu())
    torch.cat(out)
    return time.perf_counter() - t0


def ours(home: Path, name: str, backbone: str, weights: str, size: int, device: torch.device, args: argparse.Namespace) -> float:
    """spmlbench's extractor end to end (writes the cache): returns seconds."""
    t0 = time.perf_counter()
    extract_features(
        name, backbone, home=home, device=device.type, weights=weights, image_size=size, force=True,
        batch_size=args.batch_size, workers=args.workers, progress=False, exact=args.exact,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def compute_bound(backbone: str, size: int, device: torch.device, peak_tflops: float | None) -> tuple[float | None, str]:
    """Images/s the GPU could reach at its peak dense bf16 rate, and how it was computed."""
    name = torch.cuda.get_device_name(device)
    if peak_tflops is None:
        peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    if peak_tflops is None:
        return None, f"unknown peak for {name!r}; pass --peak-tflops"
    spec = get_backbone(backbone)
    if spec.arch is None:
        return None, "no network, no bound"
    gmacs = float(weights_enum(spec).meta["_ops"]) * (size / 224) ** 2
    bound = peak_tflops * 1e12 / (2 * gmacs * 1e9)
    return bound, f"{name}: {peak_tflops:.0f} TFLOP/s bf16 / (2 x {gmacs:.1f} GMACs per image)"


def run_device(device: torch.device, n: int, args: argparse.Namespace, work: Path) -> tuple[float, float]:
    """Benchmark both pipelines on one device; returns (ours img/s, plain img/s)."""
    home = work / device.type
    images = make_images(home, "bench", n, args.image_px)
    # CUDA: two full batches, so cudnn autotunes the timed run's shapes; CPU: just load everything once
    warm = 2 * (args.batch_size or 64) if device.type == "cuda" else 2
    make_images(home, "warm", warm, args.image_px)
    # warm-up: libraries, CUDA context, cudnn autotuning (same shapes as the timed run)
    ours(home, "warm", args.backbone, args.weights, args.size, device, args)
    plain_loop(home / "warm" / "images", images[: min(8, warm)], args.backbone, args.weights, args.size, device)
    t_ours = ours(home, "bench", args.backbone, args.weights, args.size, device, args)
    t_plain = plain_loop(home / "bench" / "images", images, args.backbone, args.weights, args.size, device)
    r_ours, r_plain = n / t_ours, n / t_plain
    print(f"[{device.type}] {n} images {args.image_px[0]}x{args.image_px[1]} -> {args.backbone} @ {args.size}px, weights {args.weights}")
    if device.type == "cuda":
        bound, how = compute_bound(args.backbone, args.size, device, args.peak_tflops)
        if bound is not None:
            print(f"[cuda] compute bound {bound:,.0f} img/s ({how}); ours reaches {100 * r_ours / bound:.1f}% of it")
        else:
            print(f"[cuda] compute bound: {how}")
    return r_ours, r_plain


def main(argv: list[str] | None = None) -> int:
    """Parse options, run the CPU and/or CUDA benchmark, print rates and ratios (last lines)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CPU, plus CUDA when present")
    p.add_argument("--images", type=int, default=16, help="images on the CPU")
    p.add_argument("--cuda-images", type=int, default=2048, help="images on CUDA")
    p.add_argument("--image-px", type=lambda s: tuple(int(v) for v in s.split("x")), default=(500, 375), help="WxH of the JPEGs")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=448, help="backbone input size")
    p.add_argument("--weights", choices=["none", "default"], default="none")
    p.add_argument("--batch-size", type=int, default=None, help="ours (default: 64 CUDA, 16 CPU); the plain loop uses 8")
    p.add_argument("--workers", type=int, default=None, help="ours: decode workers")
    p.add_argument("--exact", action="store_true", help="ours in fp32 on CUDA")
    p.add_argument("--peak-tflops", type=float, default=None, help="GPU dense bf16 peak (default: table by name)")
    args = p.parse_args(argv)

    devices = []
    if args.device in ("auto", "cpu"):
        devices.append((torch.device("cpu"), args.images))
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            print("no CUDA device", file=sys.stderr)
            return 2
        devices.append((torch.device("cuda"), args.cuda_images))
    work = Path(tempfile.mkdtemp(prefix="spml_bench_features_"))
    try:
        results = [(dev, *run_device(dev, n, args, work)) for dev, n in devices]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for dev, r_ours, r_plain in results:
        print(f"{dev.type:4s} ours  {r_ours:10.1f} img/s")
        print(f"{dev.type:4s} plain {r_plain:10.1f} img/s (fp32, batch 8)")
        print(f"{dev.type:4s} ratio {r_ours / r_plain:10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
