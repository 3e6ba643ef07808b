"""End-to-end fine-tuning (spmlbench.train.e2e): transform, seeds, resume, LinearInit, GR's frozen epochs.

A tiny multi-label image set (coloured squares, 3 classes) is written into the test's data home;
the backbone is resnet18 with random weights at 32 px, so every run takes a second or two on a CPU.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from spmlbench.data.store import write_labels
from spmlbench.experiments.jobs import JobSpec
from spmlbench.features import backbones
from spmlbench.train import e2e, linear_init
from spmlbench.train.images import ImageDataset, flip_mask, reference_transform
from spmlbench.train.result import TrainResult

DS = "tiny"
C = 3
SIZE = 32
COLOURS = [(230, 30, 30), (30, 200, 40), (40, 60, 220)]


def Job(  # noqa: N802 - reads like the JobSpec it builds
    *, loss: str = "an", hparams: dict[str, Any] | None = None, mode: str = "e2e", seed: int = 0,
    backbone: str = "resnet18:none", epochs: int = 2, batch_size: int = 8, lr: float = 1e-3,
    early_stop: str = "none",
) -> JobSpec:
    """A resolved JobSpec on the tiny dataset (hparams as the runner freezes them)."""
    hp = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (hparams or {}).items()))
    return JobSpec(dataset=DS, loss=loss, hparams=hp, mode=mode, seed=seed, label_seed=1200, split_seed=1200,
                   backbone=backbone, epochs=epochs, batch_size=batch_size, lr=lr, val="clean",
                   early_stop=early_stop)


FAST = {"eval_batch_size": 16, "head_lr_mult": 1.0}


def recipe(job: JobSpec) -> Any:
    """The job's resolved recipe, as the runner gives it to the trainer, with the fast test settings."""
    from spmlbench.experiments.recipes import job_recipes

    return job_recipes(job, FAST)[0]


def expected_positives(home: Path) -> dict[str, float]:
    """ROLE's ``expected_num_pos`` as the runner resolves it when the job is built (labels metadata)."""
    from spmlbench.data.store import load_labels

    meta = load_labels(DS, home).attrs["spmlbench"]["expected_positives"]
    return {"expected_num_pos": float(meta["paper"] if meta["paper"] is not None else meta["computed"])}


class MicroSpec(backbones.BackboneSpec):
    """A two-conv network with batch norm: the resnet's moving parts at a fraction of the cost."""

    widths = (8, 16)  # the two convolutions' channels (the last is ``dim``)

    def build(self, weights: str = "default", *, progress: bool = False) -> torch.nn.Module:
        a, b = self.widths
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = torch.nn.Sequential(
                torch.nn.Conv2d(3, a, 3, stride=2), torch.nn.BatchNorm2d(a), torch.nn.ReLU(),
                torch.nn.Conv2d(a, b, 3, stride=2), torch.nn.BatchNorm2d(b), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            )
        return net.eval()


MICRO = MicroSpec(name="micro", weights="none", transform="test", image_size=SIZE, dim=16, arch="micro")


@pytest.fixture
def micro(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make backbone name ``micro`` resolvable (the registry itself is left alone)."""
    original = backbones.get_backbone
    monkeypatch.setattr(backbones, "get_backbone", lambda name: MICRO if name == "micro" else original(name))
    return "micro:none"


def _write_tiny(home: Path, n_train: int = 24, n_val: int = 8, n_test: int = 12) -> None:
    rng = np.random.RandomState(0)
    ds = home / DS
    (ds / "images").mkdir(parents=True)
    n = n_train + n_val + n_test
    labels = (rng.rand(n, C) < 0.45).astype(np.int8)
    labels[labels.sum(1) == 0, 0] = 1
    observed = labels.copy()
    split = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    names = []
    for i in range(n):
        arr = rng.randint(0, 60, size=(30, 40, 3)).astype(np.uint8)  # non-square: Resize must squash
        for c in np.flatnonzero(labels[i]):
            arr[5:20, 2 + 12 * c : 12 + 12 * c] = COLOURS[c]
        name = f"img_{i:03d}.png"
        Image.fromarray(arr).save(ds / "images" / name)
        names.append(name)
        if split[i] != "test":
            keep = rng.choice(np.flatnonzero(labels[i]))
            observed[i] = 0
            observed[i, keep] = 1
    meta = {"dataset": DS, "protocol": {"label_seed": 1200, "split_seed": 1200},
            "expected_positives": {"computed": float(labels.sum(1).mean()), "paper": None}}
    write_labels(ds / "labels.parquet", names, split, labels, observed, meta)


@pytest.fixture
def tiny(home: Path) -> Path:
    _write_tiny(home)
    return home


def _run(home: Path, workdir: Path, job: JobSpec, **kw: Any) -> TrainResult:
    return e2e.train_e2e(job, recipe=recipe(job), home=home, device="cpu", workdir=workdir, workers=0, progress=False,
                         image_size=SIZE, **kw)


# --------------------------------------------------------------------------------------------- transform
def test_dataset_plus_device_normalisation_equals_reference_transform(tmp_path: Path) -> None:
    from torchvision.transforms import functional as TF

    from spmlbench.features.backbones import get_backbone

    rng = np.random.RandomState(1)
    img = Image.fromarray(rng.randint(0, 256, size=(23, 37, 4)).astype(np.uint8), "RGBA")
    img.save(tmp_path / "a.png")
    spec = get_backbone("resnet18")
    ds = ImageDataset(tmp_path, ["a.png"], image_size=20, flip_seed=5)
    flips = [bool(flip_mask(5, e, [0])[0]) for e in range(1, 30)]
    flip_epoch, keep_epoch = 1 + flips.index(True), 1 + flips.index(False)

    ref = reference_transform(20, train=False)(Image.open(tmp_path / "a.png").convert("RGB"))
    ours = spec.prepare(ds[0][0].unsqueeze(0))[0]
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.allclose(spec.prepare(ds[(0, keep_epoch)][0].unsqueeze(0))[0], ref, atol=1e-6)
    flipped = spec.prepare(ds[(0, flip_epoch)][0].unsqueeze(0))[0]
    assert torch.allclose(flipped, TF.hflip(ref), atol=1e-6)
    assert not torch.allclose(flipped, ref, atol=1e-3)


def test_flip_mask_is_a_fair_function_of_seed_epoch_row() -> None:
    rows = np.arange(20000)
    m = flip_mask(3, 2, rows)
    assert 0.48 < m.mean() < 0.52
    assert np.array_equal(m[[7, 11, 19999]], flip_mask(3, 2, [7, 11, 19999]))  # batch-independent
    assert (m != flip_mask(3, 3, rows)).mean() > 0.45  # new draws every epoch
    assert (m != flip_mask(4, 2, rows)).mean() > 0.45  # and every seed


# --------------------------------------------------------------------------------------------- recipes
def test_recipes_follow_the_papers() -> None:
    from spmlbench.experiments.recipes import e2e_recipe, linear_init_recipe

    gr = e2e_recipe("gr", "voc")
    assert (gr.lr, gr.head_lr_mult, gr.batch_size, gr.epochs, gr.early_stop) == (1e-5, 10.0, 8, 8, "drop:2")
    ll = e2e_recipe("ll_cp", "coco")
    assert (ll.batch_size, ll.epochs, ll.head_lr_mult, ll.early_stop) == (16, 10, 10.0, "drop:3")
    em = e2e_recipe("em_apl", "cub")
    assert (em.lr, em.batch_size, em.head_lr_mult, em.early_stop) == (1e-4, 8, 1.0, "no_improve")
    assert e2e_recipe("em", "coco").batch_size == 16
    an = e2e_recipe("an", "voc")
    assert (an.lr, an.batch_size, an.epochs, an.early_stop) == (1e-5, 8, 10, "none")
    over = e2e_recipe("gr", "voc", {"epochs": 3, "early_stop": "drop=1.5", "lr": None})
    assert (over.epochs, over.early_stop, over.lr) == (3, "drop:1.5", 1e-5)  # None keeps the paper's value
    assert e2e_recipe("gr", "voc", {"early_stop": True}).early_stop == "drop:2"
    assert (linear_init_recipe("role", "cub").lr, linear_init_recipe("role", "cub").batch_size) == (1e-3, 8)
    assert linear_init_recipe("role", "voc").batch_size == 16
    assert linear_init_recipe("an_ls", "nuswide").batch_size == 16
    assert (linear_init_recipe("an_ls", "voc").lr, linear_init_recipe("an_ls", "voc").epochs) == (1e-4, 25)


@pytest.mark.parametrize(
    ("rule", "history", "stop"),
    [
        ("drop:2", [50.0, 49.0], False),
        ("drop:2", [50.0, 52.0, 49.9], True),  # 2.1 below the best
        ("drop:2", [50.0, 52.0, 50.0], False),  # exactly 2 below: not more than 2
        ("no_improve", [50.0, 51.0], False),
        ("no_improve", [50.0, 51.0, 51.0], True),
        ("none", [50.0, 10.0], False),
    ],
)
def test_early_stop_rules(rule: str, history: list[float], stop: bool) -> None:
    # the rule an e2e job trains under: its recipe's, replayed by the engine over a resumed history
    from spmlbench.experiments.recipes import e2e_recipe
    from spmlbench.train.engine import Member

    recipe = dataclasses.replace(e2e_recipe("an", "voc"), early_stop=rule)
    assert Member.resumed(recipe.epochs, recipe.early_stop, history, [0.0] * len(history)).stopped is stop


# --------------------------------------------------------------------------------------------- training
def _reference_test_map(home: Path, workdir: Path, result: TrainResult) -> float:
    """Score the best checkpoint with a plain torchvision-transform loop and scikit-learn."""
    from sklearn.metrics import average_precision_score

    from spmlbench.data.store import label_matrix, load_labels
    from spmlbench.features.backbones import get_backbone

    state = torch.load(workdir / f"best-e{result.best_epoch}.pt", weights_only=False)
    net = torch.nn.Sequential()
    net.backbone = get_backbone("resnet18").build("none")
    net.head = torch.nn.Linear(512, C)
    net.load_state_dict(state["model"])
    net.eval()
    df = load_labels(DS, home)
    test = df[df["split"] == "test"]
    tf = reference_transform(SIZE, train=False)
    with torch.no_grad():
        x = torch.stack([tf(Image.open(home / DS / "images" / p).convert("RGB")) for p in test["image"]])
        scores = torch.sigmoid(net.head(net.backbone(x))).numpy()
    y = label_matrix(df, "labels", "test")
    return 100 * float(np.mean([average_precision_score(y[:, c], scores[:, c]) for c in range(C)]))


def test_tiny_run_gives_finite_metrics_and_an_independently_checked_test_map(tiny: Path, tmp_path: Path) -> None:
    res = _run(tiny, tmp_path / "w", Job(epochs=1, batch_size=12))  # the brief's resnet18, random weights
    assert res.error is None
    assert res.epochs_run == 1 and len(res.val_map) == 1 and len(res.train_loss) == 1
    assert all(math.isfinite(v) for v in res.val_map + res.train_loss + [res.test_map])
    assert res.best_epoch == 1
    assert len(res.test_ap) == C and res.test_map == pytest.approx(np.mean(res.test_ap))
    assert res.test_map == pytest.approx(_reference_test_map(tiny, tmp_path / "w", res), abs=1e-3)
    assert res.device == "cpu" and res.settings["amp"] == "fp32"
    fields = res.record_fields()
    assert fields["status"] == "ok" and fields["best_epoch"] == res.best_epoch
    assert (tmp_path / "w" / "last.pt").exists()
    assert [p.name for p in (tmp_path / "w").glob("best-e*.pt")] == [f"best-e{res.best_epoch}.pt"]


def test_killed_run_resumes_to_identical_numbers(tiny: Path, tmp_path: Path, micro: str) -> None:
    job = Job(loss="role", hparams=expected_positives(tiny), epochs=3, backbone=micro)
    full = _run(tiny, tmp_path / "full", job)
    assert full.error is None

    def kill(epoch: int, ctx: e2e.TrainContext) -> None:
        if epoch == 1:
            raise KeyboardInterrupt  # not an Exception: escapes like a real interrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tiny, tmp_path / "cut", job, hooks=e2e.Hooks(on_epoch_end=kill))
    assert torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["epoch"] == 1
    seen: list[int] = []
    resumed = _run(tiny, tmp_path / "cut", job, hooks=e2e.Hooks(on_epoch_end=lambda e, ctx: seen.append(e)))
    assert seen == [2, 3]  # only the missing epochs ran
    assert resumed.val_map == full.val_map
    assert resumed.train_loss == full.train_loss
    assert resumed.best_epoch == full.best_epoch
    assert resumed.test_map == full.test_map and resumed.test_ap == full.test_ap
    g_full = torch.load(tmp_path / "full" / "last.pt", weights_only=False)["loss"]["batched.G"]
    g_cut = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["loss"]["batched.G"]
    assert torch.equal(g_full, g_cut)


def test_failure_inside_training_becomes_an_error_result(tiny: Path, tmp_path: Path, micro: str) -> None:
    def boom(epoch: int, ctx: e2e.TrainContext) -> None:
        raise RuntimeError("disk on fire")

    res = _run(tiny, tmp_path / "w", Job(epochs=2, backbone=micro), hooks=e2e.Hooks(on_epoch_end=boom))
    assert res.error == "RuntimeError: disk on fire"
    assert res.epochs_run == 1 and res.record_fields()["status"] == "failed"


def test_gr_linear_init_freezes_the_backbone_for_n_epochs(tiny: Path, tmp_path: Path, micro: str) -> None:
    initial = {k: v.clone() for k, v in MICRO.build("none").named_parameters()}
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    initial_stats = {k: v.clone() for k, v in MICRO.build("none").named_buffers() if "running" in k}
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snap(epoch: int, ctx: e2e.TrainContext) -> None:
        snapshots[epoch] = {k: v.detach().clone() for k, v in ctx.model.named_parameters()}
        snapshots[epoch].update({k: v.clone() for k, v in ctx.model.named_buffers()})

    job = Job(loss="gr", hparams={"linear_init": 1}, epochs=2, backbone=micro)
    res = _run(tiny, tmp_path / "w", job, hooks=e2e.Hooks(on_epoch_end=snap))
    assert res.error is None
    after1, after2 = snapshots[1], snapshots[2]
    for name, value in initial.items():
        assert torch.equal(after1[f"backbone.{name}"], value), name  # frozen in epoch 1
    # only the weights are frozen: the backbone stays in train mode, so batch-norm running statistics
    # still update in the frozen epochs (GR's train.py sets requires_grad=False and keeps model.train())
    assert len(initial_stats) == 4
    for name, value in initial_stats.items():
        assert not torch.equal(after1[f"backbone.{name}"], value), name
    assert any(not torch.equal(after2[f"backbone.{n}"], v) for n, v in initial.items())  # trained in epoch 2
    from spmlbench.train.seeding import head_init

    w0, _ = head_init(0, MICRO.dim, C)
    assert not torch.equal(after1["head.weight"], w0)  # the head trained while the backbone was frozen


def test_em_apl_pseudo_labels_after_warmup(tiny: Path, tmp_path: Path, micro: str) -> None:
    job = Job(loss="em_apl", hparams={"warmup_epoch": 1, "alpha": 0.1, "beta": 0.5}, epochs=2, backbone=micro)
    out: dict[str, Any] = {}
    res = _run(tiny, tmp_path / "w", job, hooks=e2e.Hooks(on_epoch_end=lambda e, ctx: out.update(
        {e: int(ctx.loss.batched.pseudo.sum())})))
    assert res.error is None
    # theta * U_c / (T - T_w) with T = 2, T_w = 1: int(0.9 * U_c) new soft negatives per class after epoch 1
    obs = torch.load(tmp_path / "w" / "last.pt", weights_only=False)["loss"]["batched.store.observed"]
    expected = sum(int(0.9 * int(u)) for u in (~obs).sum(0))
    assert out[1] == expected and out[2] >= expected


def test_linear_init_hands_roles_label_matrix_to_fine_tuning(tiny: Path, tmp_path: Path, micro: str) -> None:
    job = Job(loss="role", hparams=expected_positives(tiny), mode="linear-init", epochs=1, backbone=micro)
    start: dict[str, torch.Tensor] = {}
    from spmlbench.experiments.recipes import linear_init_recipe

    res = linear_init.train_linear_init(
        job, recipe=recipe(job), linear_recipe=linear_init_recipe("role", DS, {"epochs": 4, "lr": 1e-2}), home=tiny,
        device="cpu", workdir=tmp_path / "w", workers=0, progress=False, image_size=SIZE,
        hooks=e2e.Hooks(on_start=lambda ctx: start.update(
            G=ctx.loss.batched.G.detach().clone(), W=ctx.model.head.weight.detach().clone())),
    )
    assert res.error is None and res.linear_phase is not None
    assert res.linear_phase["features"] == "extracted" and len(res.linear_phase["val_map"]) == 4
    linear = torch.load(tmp_path / "w" / "linear.pt", weights_only=False)
    assert torch.equal(start["G"], linear["loss"]["batched.G"])  # the matrix carried over
    assert torch.equal(start["W"], linear["head"]["weight"])  # and the head
    from spmlbench.losses import build_loss

    fresh = build_loss("role", num_classes=C, num_train=24, dataset=DS, expected_num_pos=1.5)
    fresh.init_state(torch.zeros(24, C), 0)
    assert not torch.allclose(start["G"][0][:, :], fresh.batched.G[0], atol=1e-4)  # it did train


@pytest.mark.gpu
def test_cuda_fast_and_exact_runs(tiny: Path, tmp_path: Path) -> None:
    fast = e2e.train_e2e(Job(), recipe=recipe(Job()), home=tiny, device="cuda", workdir=tmp_path / "f", workers=2,
                         progress=False, image_size=SIZE)
    exact = e2e.train_e2e(Job(), recipe=recipe(Job()), home=tiny, device="cuda", workdir=tmp_path / "x", workers=2,
                          progress=False, image_size=SIZE, exact=True)
    assert fast.error is None and exact.error is None
    assert fast.settings["amp"] == "bf16" and exact.settings["amp"] == "fp32"
    assert all(math.isfinite(v) for v in fast.val_map + exact.val_map + [fast.test_map, exact.test_map])


def test_decode_workers_do_not_change_the_numbers(tiny: Path, tmp_path: Path, micro: str) -> None:
    job = Job(epochs=1, backbone=micro)
    inline = _run(tiny, tmp_path / "a", job)
    pooled = e2e.train_e2e(job, recipe=recipe(job), home=tiny, device="cpu", workdir=tmp_path / "b", workers=2,
                           progress=False, image_size=SIZE)
    assert pooled.error is None
    assert (pooled.val_map, pooled.train_loss, pooled.test_ap) == (inline.val_map, inline.train_loss, inline.test_ap)


def test_result_makes_a_record_like_the_linear_mode(tiny: Path, tmp_path: Path, micro: str) -> None:
    from spmlbench.experiments.records import load_records, make_record, write_record

    job = Job(epochs=1, backbone=micro)
    res = _run(tiny, tmp_path / "w", job)
    write_record(tmp_path / "out", make_record(job, res, wall_s=res.wall_s, device=res.device))
    rec = load_records(tmp_path / "out").iloc[0]
    assert rec["mode"] == "e2e" and rec["status"] == "ok" and rec["job_id"] == job.job_id
    assert list(rec["val_map"]) == res.val_map and rec["test_map"] == res.test_map
