"""End-to-end training throughput: ``train_e2e``'s training pass vs the reference-style loop.

Both train the same backbone + linear head with Adam and AN targets on the same synthetic JPEGs
in the same process:

* reference: float32, batch 8, PIL decode + torchvision ``Resize``/``RandomHorizontalFlip``/
  ``ToTensor``/``Normalize`` in 4 DataLoader workers, ``drop_last``, predictions copied to the
  host every batch (the Cole et al. code's loop);
* suite: :func:`spmlbench.train.e2e.train_e2e` (bf16 autocast on CUDA, channels-last, uint8
  pinned batches normalised on the device, persistent workers, fused Adam, no host sync per step).

Reported: training images/s of the last (warm) epoch for each, the ratio, peak GPU memory, and the
achieved model TFLOP/s (3 x forward FLOPs per image). Evaluation passes are not timed.

    python benchmarks/e2e_throughput.py                 # CUDA: resnet50, 448 px; CPU: tiny config
    python benchmarks/e2e_throughput.py --images 1024 --batch-size 8 --json
    python benchmarks/e2e_throughput.py --lockstep 8    # 8 models in lockstep vs 8 separate runs (e2e_lockstep.py)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

DATASET = "benchimg"
NUM_CLASSES = 20


def make_images(home: Path, n_train: int, width: int, height: int, n_eval: int = 8) -> None:
    """Synthetic VOC-like JPEGs (smooth noise + coloured boxes) and a labels.parquet in ``home``."""
    from spmlbench.data.store import write_labels

    rng = np.random.RandomState(0)
    root = home / DATASET / "images"
    root.mkdir(parents=True)
    n = n_train + 2 * n_eval
    labels = (rng.rand(n, NUM_CLASSES) < 0.1).astype(np.int8)
    labels[np.arange(n), rng.randint(0, NUM_CLASSES, n)] = 1
    observed = np.zeros_like(labels)
    observed[np.arange(n), labels.argmax(1)] = 1
    names = []
    base = rng.randint(0, 255, size=(height // 8 + 1, width // 8 + 1, 3)).astype(np.uint8)
    for i in range(n):
        img = Image.fromarray(np.roll(base, i, axis=1)).resize((width, height), Image.Resampling.BILINEAR)
        arr = np.array(img)
        for c in np.flatnonzero(labels[i]):
            y, x = rng.randint(0, max(1, height // 2)), rng.randint(0, max(1, width // 2))
            arr[y : y + height // 4, x : x + width // 4] = (c * 12, 255 - c * 12, (c * 40) % 255)
        names.append(f"{i:05d}.jpg")
        Image.fromarray(arr).save(root / names[-1], quality=90)
    split = ["train"] * n_train + ["val"] * n_eval + ["test"] * n_eval
    meta = {"dataset": DATASET, "protocol": {"label_seed": 1200, "split_seed": 1200},
            "expected_positives": {"computed": float(labels.sum(1).mean())}}
    write_labels(home / DATASET / "labels.parquet", names, split, labels, observed, meta)


class RefDataset(torch.utils.data.Dataset):
    """Reference style: PIL open/convert and the torchvision transform in the worker, float output."""

    def __init__(self, root: Path, names: list[str], targets: np.ndarray, size: int) -> None:
        from spmlbench.train.images import reference_transform

        self.root, self.names, self.targets = root, names, torch.from_numpy(targets.astype(np.float32))
        self.tf = reference_transform(size, train=True)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(self.root / self.names[i]) as img:
            return self.tf(img.convert("RGB")), self.targets[i]


def reference_loop(home: Path, backbone: str, weights: str, size: int, batch: int, epochs: int, workers: int,
                   device: torch.device) -> float:
    """Images/s of the last epoch of a plain fp32 training loop (the reference code's shape)."""
    from spmlbench.data.store import label_matrix, load_labels
    from spmlbench.features.backbones import get_backbone

    df = load_labels(DATASET, home)
    train = df[df["split"] == "train"]
    spec = get_backbone(backbone)
    model = torch.nn.Sequential(spec.build(weights), torch.nn.Linear(spec.dim, NUM_CLASSES)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    ds = RefDataset(home / DATASET / "images", train["image"].tolist(), label_matrix(df, "observed", "train"), size)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    rate = 0.0
    for _ in range(epochs):
        model.train()
        t0, seen = time.perf_counter(), 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            opt.zero_grad()
            logits = model(x)
            preds_np = torch.sigmoid(logits).detach().cpu().numpy()  # the reference logs preds every batch
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
            loss.backward()
            opt.step()
            seen += len(preds_np)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = seen / (time.perf_counter() - t0)
    return rate


def forward_flops(backbone: str, size: int) -> float:
    """Forward FLOPs of one image through the backbone (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    from spmlbench.features.backbones import get_backbone

    net = get_backbone(backbone).build("none")
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def main() -> None:
    """Parse options, build the images, time both loops, print the comparison (``--lockstep M``: the lockstep
    comparison of :mod:`e2e_lockstep` instead)."""
    import sys

    if "--lockstep" in sys.argv:
        import e2e_lockstep

        i = sys.argv.index("--lockstep")
        sys.argv[i] = "--models"
        e2e_lockstep.main()
        return
    from spmlbench.experiments.jobs import JobSpec
    from spmlbench.experiments.recipes import job_recipes
    from spmlbench.runtime import default_workers, resolve_device
    from spmlbench.train.e2e import train_e2e

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, help="training images (CUDA 1024, CPU 32)")
    ap.add_argument("--image-size", type=int, help="square input size (CUDA 448, CPU 64)")
    ap.add_argument("--source-size", default=None, help="WxH of the JPEGs (CUDA 500x375, CPU 96x72)")
    ap.add_argument("--backbone", help="registry backbone (CUDA resnet50, CPU resnet18)")
    ap.add_argument("--weights", default="none", help="default|none (throughput does not depend on them)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2, help="the last epoch is timed (the first warms up)")
    ap.add_argument("--workers", type=int, help="suite decode workers (default: train_e2e's)")
    ap.add_argument("--ref-workers", type=int, default=4, help="reference DataLoader workers (Cole: 4)")
    ap.add_argument("--exact", action="store_true", help="run the suite in fp32 too")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()

    dev = resolve_device(args.device)
    cuda = dev.type == "cuda"
    n = args.images or (1024 if cuda else 32)
    size = args.image_size or (448 if cuda else 64)
    w, h = (int(v) for v in (args.source_size or ("500x375" if cuda else "96x72")).split("x"))
    backbone = args.backbone or ("resnet50" if cuda else "resnet18")
    workers = default_workers(dev, args.workers)
    ref_workers = args.ref_workers if cuda else 0  # CPU: no worker start-up cost skewing a tiny run

    with tempfile.TemporaryDirectory(prefix="spml-e2e-bench-") as tmp:
        home = Path(tmp)
        make_images(home, n, w, h)
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        ref_rate = reference_loop(home, backbone, args.weights, size, args.batch_size, args.epochs, ref_workers, dev)
        ref_mem = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
        job = JobSpec(DATASET, "an", (), "e2e", 0, 1200, 1200, f"{backbone}:{args.weights}", args.epochs,
                      args.batch_size, 1e-5, "clean", "none")
        recipe, _ = job_recipes(job, {"eval_batch_size": 64})
        res = train_e2e(job, recipe=recipe, home=home, device=dev, workdir=home / "work", exact=args.exact,
                        workers=workers, progress=False, image_size=size)
        if res.error:
            raise SystemExit(f"train_e2e failed: {res.error}")
        ours_mem = torch.cuda.max_memory_allocated(dev) / 2**30 if cuda else float("nan")
        ours_rate = n / res.train_s[-1]

    flops = 3 * forward_flops(backbone, size)
    out = {
        "device": res.device, "backbone": backbone, "image_size": size, "batch_size": args.batch_size,
        "images": n, "workers": workers, "ref_workers": ref_workers, "suite_precision": res.settings["amp"],
        "reference_img_s": round(ref_rate, 2), "suite_img_s": round(ours_rate, 2),
        "speedup": round(ours_rate / ref_rate, 3), "reference_peak_gib": round(ref_mem, 2),
        "suite_peak_gib": round(ours_mem, 2), "suite_model_tflop_s": round(ours_rate * flops / 1e12, 3),
        "reference_model_tflop_s": round(ref_rate * flops / 1e12, 3),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"device {out['device']}  backbone {backbone} @ {size}px  batch {args.batch_size}  {n} train images")
    print(f"{'loop':<11}{'img/s':>10}{'peak GiB':>10}{'TFLOP/s':>9}")
    def mem(v: float) -> str:
        return "-" if v != v else f"{v:.2f}"

    print(f"{'reference':<11}{ref_rate:>10.1f}{mem(ref_mem):>10}{out['reference_model_tflop_s']:>9.3f}  "
          f"fp32, {ref_workers} workers")
    print(f"{'suite':<11}{ours_rate:>10.1f}{mem(ours_mem):>10}{out['suite_model_tflop_s']:>9.3f}  "
          f"{res.settings['amp']}, {workers} workers")
    print(f"speedup {out['speedup']:.2f}x")


if __name__ == "__main__":
    main()
