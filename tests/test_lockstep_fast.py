"""Lockstep's fast mode (fused optimiser kernels, as a separate run's) against separate runs, early stops inside a
group, and groups split by the device's memory (spmlbench.train.lockstep, spmlbench.train.lockstep_memory)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from spmlbench.features import backbones
from spmlbench.train import e2e_job, lockstep
from spmlbench.train.lockstep_memory import StepMemory, group_limit, split_sizes, step_memory
from test_e2e import SIZE, Job, MicroSpec, _run, micro, tiny  # noqa: F401 - fixtures
from test_lockstep import _jobs, _lockstep


class WideSpec(MicroSpec):
    """3 -> 32 -> 256 channels (75k weights): enough that torch's fused Adam rounds some updates differently from
    the default loop, still a fraction of a second per epoch."""

    widths = (32, 256)


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make backbone name ``wide`` resolvable (the registry itself is left alone)."""
    spec = WideSpec(name="wide", weights="none", transform="test", image_size=SIZE, dim=256, arch="wide")
    original = backbones.get_backbone
    monkeypatch.setattr(backbones, "get_backbone", lambda name: spec if name == "wide" else original(name))
    return "wide:none"


def _spy(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], dict[str, list[tuple[int, ...]]]]:
    """Record each optimiser's ``fused`` flags and the rows of every training step, per loss."""
    flags: list[Any] = []
    rows: dict[str, list[tuple[int, ...]]] = {}
    build, step = e2e_job.build_optimizer, e2e_job.train_step

    def build_spy(*a: Any, **k: Any) -> torch.optim.Optimizer:
        opt = build(*a, **k)
        flags.append({g.get("fused") for g in opt.param_groups})
        return opt

    def step_spy(run: Any, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        rows.setdefault(run.job.loss, []).append(tuple(r.tolist()))
        return step(run, x, r)

    monkeypatch.setattr(e2e_job, "build_optimizer", build_spy)
    monkeypatch.setattr(e2e_job, "train_step", step_spy)
    monkeypatch.setattr(lockstep, "train_step", step_spy)
    return flags, rows


def test_fast_mode_equals_separate_runs_bit_for_bit(tiny: Path, wide: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A separate run builds the optimiser a group's job builds (fused kernels unless exact): the same numbers."""
    flags, rows = _spy(monkeypatch)
    jobs = _jobs(tiny, wide, epochs=2)[:3]
    together = _lockstep(tiny, tmp_path / "lock", jobs)
    assert flags == [{True}] * len(jobs)  # the fast mode: fused kernels
    lock_rows, rows_seen = dict(rows), rows
    rows_seen.clear()
    for i, job in enumerate(jobs):
        alone = _run(tiny, tmp_path / "alone" / str(i), job)
        got = together[i]
        assert got.status == "ok" and alone.status == "ok", (job.loss, got.error, alone.error)
        assert lock_rows[job.loss] == rows_seen[job.loss], job.loss  # the same batches in the same order
        assert (got.val_map, got.train_loss, got.test_map, got.test_ap) == \
            (alone.val_map, alone.train_loss, alone.test_map, alone.test_ap), job.loss
        assert got.settings == alone.settings and got.settings["optimizer_kernels"] == "fused"
    assert flags[len(jobs):] == [{True}] * len(jobs)  # a separate run: the same fused kernels


def test_exact_mode_keeps_the_separate_runs_optimiser(tiny: Path, micro: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    flags, _ = _spy(monkeypatch)
    jobs = [dataclasses.replace(j, exact=True) for j in _jobs(tiny, micro, epochs=1)[:2]]
    _lockstep(tiny, tmp_path, jobs, exact=True)
    assert flags == [{None}, {None}]


def test_a_stopped_job_takes_no_more_steps(tiny: Path, micro: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """``no_improve`` stops the lr 0.1 job after its 4th epoch; the other trains on, the stopped one's record
    and ``last.pt`` stay those of its 4th epoch, as alone."""
    _, rows = _spy(monkeypatch)
    jobs = [Job(loss="an", backbone=micro, epochs=5, lr=0.1, early_stop="no_improve"),
            Job(loss="em", backbone=micro, epochs=5, lr=1e-3)]
    got = _lockstep(tiny, tmp_path / "lock", jobs)
    stopped = len(got[0].val_map)
    assert 1 < stopped < 5 and len(got[1].val_map) == 5  # the fixture's precondition
    per_epoch = len(rows["em"]) // 5
    assert len(rows["an"]) == stopped * per_epoch
    last = torch.load(tmp_path / "lock" / "0" / "last.pt", weights_only=True)
    assert last["epoch"] == stopped and last["history"]["stopped"]
    alone = _run(tiny, tmp_path / "alone", jobs[0])
    assert got[0].val_map == alone.val_map and got[0].best_epoch == alone.best_epoch


def test_a_group_larger_than_the_device_trains_in_parts(tiny: Path, micro: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A budget of 2.5 models splits 5 jobs into 2 + 2 + 1; each job's numbers do not depend on its part."""
    one = step_memory(micro.split(":")[0], SIZE, 8, torch.device("cpu"))
    assert one.resident > 0 and one.transient == 0
    sizes: list[int] = []
    train_group = lockstep._train_group

    def spy(jobs: Any, *a: Any, **k: Any) -> Any:
        sizes.append(len(jobs))
        return train_group(jobs, *a, **k)

    monkeypatch.setattr(lockstep, "_train_group", spy)
    jobs = _jobs(tiny, micro, epochs=2)
    monkeypatch.setattr(lockstep, "device_budget", lambda dev: int(2.5 * one.resident))
    parts = _lockstep(tiny, tmp_path / "parts", jobs)
    monkeypatch.setattr(lockstep, "device_budget", lambda dev: 1 << 50)
    whole = _lockstep(tiny, tmp_path / "whole", jobs)
    assert sizes == [2, 2, 1, 5]
    for a, b in zip(parts, whole):
        assert (a.val_map, a.train_loss, a.test_map) == (b.val_map, b.train_loss, b.test_map)


def test_group_limit_and_parts() -> None:
    assert group_limit(StepMemory(resident=10, transient=5), 45) == 4
    assert group_limit(StepMemory(resident=10, transient=5), 4) == 1  # one model that does not fit trains alone
    assert split_sizes(10, 8) == [5, 5] and split_sizes(3, 8) == [3] and split_sizes(5, 2) == [2, 2, 1]
    assert split_sizes(0, 4) == [] and sum(split_sizes(97, 8)) == 97 and max(split_sizes(97, 8)) <= 8
    assert math.isclose(sum(split_sizes(17, 1)), 17)


def test_fused_kernels_for_sgd_and_across_a_resume(micro: str) -> None:
    """The fast mode fuses SGD too (LL's VOC recipe), Adamax (MIME) has no fused kernel; a checkpoint of the
    default loop loaded into a fused optimiser (or back) leaves each its own kernels."""
    from spmlbench.train.e2e_model import build_model
    from spmlbench.train.e2e_recipe import E2ERecipe

    model, _ = build_model("micro", "none", 3, 0)
    cpu = torch.device("cpu")
    for name, kind in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam)):
        r = E2ERecipe("test", name, 0.9, 1e-4, 0.1, 10.0, 8, 1, "none", 16, "test")
        fused = e2e_job.build_optimizer(model, torch.nn.Identity(), r, cpu, False)  # the fast mode
        loop = e2e_job.build_optimizer(model, torch.nn.Identity(), r, cpu, True)  # exact: torch's default loop
        assert isinstance(fused, kind) and {g["fused"] for g in fused.param_groups} == {True}
        assert {g["fused"] for g in loop.param_groups} == {None}
        model(torch.randn(2, 3, SIZE, SIZE)).sum().backward()
        loop.step()
        e2e_job.load_optimizer_state(fused, loop.state_dict())
        fused.step()
        e2e_job.load_optimizer_state(loop, fused.state_dict())
        assert {g["fused"] for g in fused.param_groups} == {True} and {g["fused"] for g in loop.param_groups} == {None}
    r = E2ERecipe("test", "adamax", 0.9, 1e-4, 0.1, 10.0, 8, 1, "none", 16, "test")
    assert not e2e_job.fused_kernels(r, exact=False) and e2e_job.fused_kernels(dataclasses.replace(r, optimizer="sgd"), False)
    assert isinstance(e2e_job.build_optimizer(model, torch.nn.Identity(), r, cpu, False), torch.optim.Adamax)


@pytest.mark.gpu
def test_cuda_memory_probe_and_lockstep(tiny: Path, micro: str, tmp_path: Path) -> None:
    """On CUDA: the probe measures what a model keeps (at least its 4 Adam copies) and a step's activations; a
    group with ``exact`` gives its separate runs' numbers bit for bit, the fast mode (bf16) finite ones."""
    from spmlbench.train.e2e import train_e2e
    from spmlbench.train.e2e_model import build_model
    from spmlbench.train.lockstep_memory import PROBE_CLASSES
    from test_e2e import recipe

    dev = torch.device("cuda")
    model, _ = build_model(micro.split(":")[0], "none", PROBE_CLASSES, 0)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    one = step_memory(micro.split(":")[0], SIZE, 8, dev)
    assert one.resident >= 4 * params and one.transient > 0
    for exact in (True, False):
        jobs = _jobs(tiny, micro, epochs=2, exact=exact)[:3]
        root = tmp_path / str(exact)
        together = lockstep.train_lockstep(jobs, [recipe(j) for j in jobs], [root / f"{i}" for i in range(3)],
                                           home=tiny, device="cuda", workers=0, image_size=SIZE, exact=exact)
        for i, job in enumerate(jobs):
            got = together[i]
            assert got.status == "ok", (job.loss, got.error)
            assert all(math.isfinite(v) for v in [*got.val_map, got.test_map])
            if exact:
                alone = train_e2e(job, recipe=recipe(job), home=tiny, device="cuda", workdir=root / f"alone{i}",
                                  workers=0, progress=False, image_size=SIZE, exact=True)
                assert (got.val_map, got.train_loss, got.test_map) == \
                    (alone.val_map, alone.train_loss, alone.test_map), job.loss
