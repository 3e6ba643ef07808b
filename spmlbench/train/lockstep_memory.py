"""How many end-to-end models a lockstep group holds on its device at once; a larger group trains in parts.

Every model of a group keeps its parameters, its gradients (kept from one step to its next) and Adam's two
moments on the device for the whole run (``resident``); the models step one at a time, so one step's
activations count once (``transient``). :func:`step_memory` measures both at the start of a group, for the
group's backbone, image size and batch size:

* CUDA: a throwaway model (random weights, the linear head) takes one training step on a random batch with the
  trainer's settings (bf16 autocast unless exact, channels-last, Adam): ``memory_allocated`` after the step
  minus before it is what a model keeps, ``max_memory_allocated`` minus that is the step's transient;
* CPU: from the parameter count (4 copies of the parameters, plus the buffers); the step's activations are
  not measured: the CPU's budget is half the available memory, the other half is left to them, the decoded
  batches and the evaluation.

:func:`device_budget` is the free memory at the start (CUDA: ``mem_get_info``, 90%; CPU: ``MemAvailable``,
50%); :func:`group_limit` how many models fit in it; :func:`split_sizes` the parts (balanced, in order).
The head's size depends on the dataset's classes; the probe's has :data:`PROBE_CLASSES` (under 1% of a ResNet).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
from pathlib import Path

import torch

CUDA_FRACTION = 0.9
CPU_FRACTION = 0.5
PROBE_CLASSES = 80  # COCO's: the largest head of the suite's datasets
ADAM_COPIES = 4  # parameters, gradients, exp_avg, exp_avg_sq


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes one model of a group keeps on the device (``resident``) and needs on top while it steps."""

    resident: int
    transient: int


def step_memory(backbone: str, image_size: int | None, batch_size: int, device: torch.device,
                exact: bool = False) -> StepMemory:
    """One model's memory (see the module doc): measured on CUDA, counted on the CPU."""
    from spmlbench.train.e2e_model import build_model

    if device.type != "cuda":
        model, _ = build_model(backbone, "none", PROBE_CLASSES, 0)
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        return StepMemory(ADAM_COPIES * params + buffers, 0)
    return _cuda_step_memory(backbone, image_size, batch_size, device, exact)


def _cuda_step_memory(backbone: str, image_size: int | None, batch_size: int, device: torch.device,
                      exact: bool) -> StepMemory:
    from spmlbench.train.e2e_model import build_model

    gc.collect()  # an earlier group's models (reference cycles), then their cached blocks: not this group's
    torch.cuda.empty_cache()
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    model, spec = build_model(backbone, "none", PROBE_CLASSES, 0)
    model.to(device).to(memory_format=torch.channels_last).train()
    size = int(image_size or spec.image_size)
    x = torch.randn(batch_size, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    target = torch.zeros(batch_size, PROBE_CLASSES, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-6, fused=True)
    logits = model(x, None if exact else torch.bfloat16)
    torch.nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    opt.step()
    del logits
    torch.cuda.synchronize(device)
    resident = torch.cuda.memory_allocated(device) - before - x.numel() * x.element_size() - target.numel() * 4
    peak = torch.cuda.max_memory_allocated(device) - before
    del model, opt, x, target
    torch.cuda.empty_cache()
    return StepMemory(max(resident, 1), max(peak - resident, 0))


def device_budget(device: torch.device) -> int:
    """Bytes a group may take: a fraction of the device's free memory now (see the module doc)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_FRACTION)
    return int(_available_ram() * CPU_FRACTION)


def _available_ram() -> int:
    """``MemAvailable`` of /proc/meminfo (free pages where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def group_limit(memory: StepMemory, budget: int) -> int:
    """How many models fit in ``budget`` bytes (at least one: a model that does not fit trains alone)."""
    return max(1, (budget - memory.transient) // max(memory.resident, 1))


def split_sizes(n: int, limit: int) -> list[int]:
    """``n`` models in the fewest parts of at most ``limit`` each, balanced (10 by 8: 5 + 5)."""
    parts = math.ceil(n / max(limit, 1)) if n else 0
    return [n // parts + (1 if k < n % parts else 0) for k in range(parts)]
