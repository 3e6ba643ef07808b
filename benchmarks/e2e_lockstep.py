"""Lockstep end-to-end training against separate runs, in the same process: image-steps/s, decodes, memory.

M jobs of one seed (M losses, the linear head) train on the same synthetic JPEGs (VOC's typical 500x375 by
default) five ways, each in a fresh child process so that its peak RSS is its own:

* separate: ``train_e2e`` once per job (each decodes, resizes and flips every image itself; fused Adam);
* fast: ``train_lockstep`` on the M jobs in one process (one decode per batch, every model steps on it with the
  optimiser of a separate run: on the CPU the numbers of ``separate`` bit for bit, tests/test_lockstep_fast.py);
* lanes (CPU only): ``fast`` split over ``--processes`` spawned processes (default: one per torch thread), each
  with its share of the threads (spmlbench.train.lockstep_lanes; ``spmlbench run --processes N``);
* separate-exact and exact: the same as ``separate`` and ``fast`` with ``exact`` numerics (torch's default Adam
  loop on the CPU; fp32 without bf16 autocast on CUDA).

Reported: image-steps/s (M x training images x timed epochs / training time; lanes: the slowest lane's), images
decoded per second, peak RSS (CPU: this process and its lanes, summed, sampled every 20 ms) or peak GPU memory
per model, the CPU utilisation of the whole training call (CPU seconds of the process tree / wall seconds x
cores; evaluation and spawns included), GPU utilisation over the training (CUDA, from nvidia-smi where present),
and each lockstep variant's ratio to the separate runs of its numerics. A sixth child times the input pipeline
alone (one job's training loader: decode, resize, flip, to the device, prepare; no model), which gives the share
of a separate image-step that the lockstep shares and the ratio that sharing it accounts for. Each row is printed
as its variant finishes, so a run cut short by a time limit (gpu_checks.sh) keeps what it measured.

    python benchmarks/e2e_lockstep.py --models 8                      # CPU: resnet18 at 48 px, 64 images
    python benchmarks/e2e_lockstep.py --models 8 --image-size 32 --threads 1
    python benchmarks/e2e_lockstep.py --models 8 --device cuda        # CUDA: resnet50 at 448 px, 256 images
    python benchmarks/e2e_throughput.py --lockstep 8                  # the same, through the throughput script
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LOSSES = ("an", "an_ls", "wan", "focal", "asl", "hill", "gr", "epr", "role", "em", "ll_r", "ll_ct", "ll_cp", "splc",
          "em_apl", "bce")


VARIANTS = ("separate", "fast", "lanes", "separate-exact", "exact")
BASELINE = {"fast": "separate", "lanes": "separate", "exact": "separate-exact"}


def _jobs(models: int, backbone: str, epochs: int, batch: int, exact: bool = False) -> list:
    from spmlbench.experiments.jobs import JobSpec

    hp = {"epr": (("expected_num_pos", 2.0),), "role": (("expected_num_pos", 2.0),)}
    return [JobSpec("benchimg", loss, hp.get(loss, ()), "e2e", 0, 1200, 1200, f"{backbone}:none", epochs, batch, 1e-5,
                    "clean", "none", exact=exact) for loss in LOSSES[:models]]


def _input_child(args: argparse.Namespace, home: Path, dev: torch.device) -> dict:
    """The input pipeline alone, as one job's training builds it (decode, resize, flip, to the device, prepare):
    seconds of the timed epoch, no model step."""
    from spmlbench.experiments.recipes import job_recipes
    from spmlbench.train.e2e_data import backbone_and_weights, load_job_data
    from spmlbench.train.e2e_job import model_head, train_input
    from spmlbench.train.e2e_model import build_model

    job = _jobs(1, args.backbone, args.epochs, args.batch_size)[0]
    recipe = job_recipes(job, {"eval_batch_size": 64})[0]
    data = load_job_data(job, home)
    _, spec = build_model(*backbone_and_weights(job, None), data.num_classes, 0, *model_head(job))
    loader, sampler = train_input(data, spec, 0, recipe, args.image_size, dev, args.workers)
    train_s = 0.0
    for epoch in range(1, args.epochs + 1):
        sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        for x, _ in loader:
            x = spec.prepare(x.to(dev, non_blocking=True), channels_last=dev.type == "cuda")
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        train_s = time.perf_counter() - t0
    return {"variant": "input", "train_s": train_s, "decoded_s": args.images / train_s}


def _child(args: argparse.Namespace) -> dict:
    """One variant in this process: its training seconds (timed epochs), decodes and peak memory."""
    from e2e_throughput import make_images

    from spmlbench.experiments.recipes import job_recipes
    from spmlbench.runtime import resolve_device
    from spmlbench.train.e2e import train_e2e
    from spmlbench.train.lockstep import train_lockstep

    dev = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.only == "input":
        with tempfile.TemporaryDirectory(prefix="spml-lockstep-") as tmp:
            w, h = (int(v) for v in args.source_size.split("x"))
            make_images(Path(tmp), args.images, w, h)
            return _input_child(args, Path(tmp), dev)
    lockstep, exact = args.only in BASELINE, args.only in ("exact", "separate-exact")
    processes = (args.processes or torch.get_num_threads()) if args.only == "lanes" else 1
    rss = _TreeRss() if dev.type == "cpu" else None
    with tempfile.TemporaryDirectory(prefix="spml-lockstep-") as tmp:
        home = Path(tmp)
        w, h = (int(v) for v in args.source_size.split("x"))
        make_images(home, args.images, w, h)
        jobs = _jobs(args.models, args.backbone, args.epochs, args.batch_size, exact)
        recipes = [job_recipes(j, {"eval_batch_size": 64})[0] for j in jobs]
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0, cpu0 = time.perf_counter(), _cpu_seconds()
        if lockstep:
            results = train_lockstep(jobs, recipes, [home / f"w{i}" for i in range(len(jobs))], home=home, device=dev,
                                     exact=exact, workers=args.workers, image_size=args.image_size, processes=processes)
        else:
            results = [train_e2e(j, recipe=r, home=home, device=dev, workdir=home / f"w{i}", workers=args.workers, exact=exact,
                                 progress=False, image_size=args.image_size) for i, (j, r) in enumerate(zip(jobs, recipes))]
        wall = time.perf_counter() - t0
        cpu_util = 100 * (_cpu_seconds() - cpu0) / (wall * len(os.sched_getaffinity(0)))
        failed = [r.error for r in results if r.status != "ok"]
        if failed:
            raise SystemExit(f"{args.only}: {failed[0]}")
        # lockstep: each member records its group's epoch time (lanes: its lane's; the lanes run side by side)
        train_s = max(r.train_s[-1] for r in results) if lockstep else sum(r.train_s[-1] for r in results)
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if rss is None else rss.stop() / 2**30
    decodes = args.images * (1 if lockstep else args.models)
    return {"variant": args.only, "train_s": train_s, "wall_s": wall, "image_steps_s": args.models * args.images / train_s,
            "decoded_s": decodes / train_s, "peak_gib": peak, "peak_gib_per_model": peak / args.models,
            "device": results[0].device, "cpu_util_pct": cpu_util}


def main() -> None:
    """Parse options; run each variant in a child process; print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=8, help=f"jobs trained together (at most {len(LOSSES)})")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--images", type=int, help="training images (CUDA 256, CPU 64)")
    ap.add_argument("--image-size", type=int, help="input size (CUDA 448, CPU 48)")
    ap.add_argument("--source-size", default="500x375", help="WxH of the JPEGs (VOC's typical size)")
    ap.add_argument("--backbone", help="CUDA resnet50, CPU resnet18")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=2, help="the last epoch is timed")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: the trainer's)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in each variant (default: torch's)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="which of " + ",".join(VARIANTS) + " to run")
    ap.add_argument("--processes", type=int, default=None, help="lanes: processes (default: one per torch thread)")
    ap.add_argument("--only", choices=(*VARIANTS, "input"), help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    variants = [v for v in VARIANTS if v in args.variants.split(",")]
    missing = sorted({BASELINE[v] for v in variants if v in BASELINE} - set(variants))
    if missing:
        raise SystemExit(f"--variants: {', '.join(missing)} is the baseline of a ratio asked for; add it")
    from spmlbench.runtime import resolve_device

    cuda = resolve_device(args.device).type == "cuda"
    if cuda and "lanes" in variants:
        variants.remove("lanes")  # lanes are a CPU layout
    args.images = args.images or (256 if cuda else 64)
    args.image_size = args.image_size or (448 if cuda else 48)
    args.backbone = args.backbone or ("resnet50" if cuda else "resnet18")
    if args.only:
        print(json.dumps(_child(args)))
        return
    out: dict[str, dict] = {}
    for variant in (*variants, "input"):  # each row printed as it comes: a run cut short keeps what it measured
        cmd = [sys.executable, __file__, *sys.argv[1:], "--only", variant]
        util = _gpu_util_start() if cuda else None
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
        if res.returncode != 0:
            raise SystemExit(res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"{variant} failed")
        out[variant] = json.loads(res.stdout.strip().splitlines()[-1])
        if util is not None:
            out[variant]["gpu_util_pct"] = _gpu_util_stop(util)
        if not args.json:
            _print_row(args, out, variant)
    ratios = {v: _ratio(out, v) for v in variants if v in BASELINE}
    ceiling = _ceiling(out, args.models)
    if args.json:
        print(json.dumps({**out, "ratios": ratios, "ceiling": ceiling}))
    elif ceiling:
        print(f"input pipeline alone: {out['input']['decoded_s']:.1f} images/s, {100 * ceiling['input_share']:.1f}% "
              f"of a separate run's image-step; decoding once for {args.models} models accounts for "
              f"{ceiling['ratio']:.2f}x (what lockstep gains beyond it is other per-batch work done once; a "
              "model's own step, the rest, is not shared)", flush=True)


def _ratio(out: dict, variant: str) -> float:
    """A lockstep variant's image-steps/s over its baseline's (1.0 for a baseline)."""
    base = BASELINE.get(variant)
    return out[variant]["image_steps_s"] / out[base]["image_steps_s"] if base else 1.0


def _print_row(args: argparse.Namespace, out: dict, variant: str) -> None:
    """The table's header (before the first row) and ``variant``'s row (the input child has none)."""
    if variant == "input":
        return
    if len(out) == 1:
        print(f"device {out[variant]['device']}  {args.backbone} @ {args.image_size}px  batch {args.batch_size}  "
              f"{args.models} models  {args.images} train images  threads {args.threads or torch.get_num_threads()}")
        print(f"{'variant':<15}{'image-steps/s':>15}{'decoded/s':>11}{'peak GiB/model':>16}{'CPU util %':>12}"
              f"{'GPU util %':>12}{'x its separate':>16}")
    r = out[variant]
    print(f"{variant:<15}{r['image_steps_s']:>15.1f}{r['decoded_s']:>11.1f}{r['peak_gib_per_model']:>16.3f}"
          f"{r['cpu_util_pct']:>12.1f}{r.get('gpu_util_pct', float('nan')):>12.1f}{_ratio(out, variant):>16.2f}",
          flush=True)


def _ceiling(out: dict, models: int) -> dict:
    """What sharing the input accounts for (Amdahl): a separate image-step takes S = 1 / rate, of which the
    input pipeline alone takes D; with the input shared by M models it takes S - D + D / M, a ratio of
    S / (S - D + D / M). Empty without the separate variant."""
    if "separate" not in out:
        return {}
    step = 1.0 / out["separate"]["image_steps_s"]
    share = min(1.0, (1.0 / out["input"]["decoded_s"]) / step)
    return {"input_share": share, "ratio": 1.0 / (1.0 - share + share / models)}


class _TreeRss:
    """Peak resident memory of this process and its children (the lanes), summed, sampled every 20 ms."""

    def __init__(self) -> None:
        import threading

        self.peak, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, sum(_rss(p) for p in _tree(os.getpid())))

    def stop(self) -> int:
        """Stop sampling; the peak in bytes (at least this process's own peak)."""
        self._done.set()
        self._thread.join()
        return max(self.peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the lanes, once their pool is shut down)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return out


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` (0 once it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def _gpu_util_start() -> subprocess.Popen | None:
    """nvidia-smi sampling the GPU's utilisation every 200 ms (None without nvidia-smi)."""
    try:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                 "-lms", "200"], stdout=subprocess.PIPE, text=True)
    except OSError:
        return None


def _gpu_util_stop(proc: subprocess.Popen) -> float:
    proc.terminate()
    text, _ = proc.communicate(timeout=10)
    values = [float(v) for v in text.split() if v.replace(".", "", 1).isdigit()]
    return sum(values) / len(values) if values else float("nan")


if __name__ == "__main__":
    main()
