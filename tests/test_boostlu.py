"""BoostLU (Kim et al., CVPR 2023): the boosted-CAM head by hand, alpha = 1 is the plain linear head, the
LL losses on it through the end-to-end trainer, and linear mode refused (no feature map there)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spmlbench.errors import ConfigError
from spmlbench.experiments.jobs import JobSpec
from spmlbench.heads.builtin.boostlu import BoostLUHead
from spmlbench.train.e2e_model import build_model


def test_boost_and_pooling_by_hand() -> None:
    head = BoostLUHead(dim=1, num_classes=1, alpha=5.0)
    with torch.no_grad():
        head.weight.fill_(2.0)
        head.bias.fill_(-1.0)
    fmap = torch.tensor([[[[1.0, -0.5], [2.0, 0.0]]]])  # (B=1, D=1, 2, 2)
    # CAM = 2 F - 1 = [[1, -2], [3, -1]]; positives x 5 -> [[5, -2], [15, -1]]; mean = 17 / 4
    assert head.cam(fmap).tolist() == [[[[1.0, -2.0], [3.0, -1.0]]]]
    assert head(fmap).tolist() == [[4.25]]
    head.alpha = 1.0
    assert head(fmap).tolist() == [[0.25]]  # no boost: the mean of the CAM


def test_alpha_one_equals_the_plain_linear_head() -> None:
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    plain, _ = build_model("resnet18", "none", 4, seed=3)
    boost1, _ = build_model("resnet18", "none", 4, seed=3, head="boostlu", options={"alpha": 1.0})
    boost5, _ = build_model("resnet18", "none", 4, seed=3, head="boostlu", options={"alpha": 5.0})
    for m in (plain, boost1, boost5):
        m.eval()
    with torch.no_grad():
        a, b, c = plain(x), boost1(x), boost5(x)
    assert torch.equal(plain.head.weight, boost1.head.weight)  # the same seeded init
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)


def _job(loss: str, mode: str = "e2e", **hp: float) -> JobSpec:
    return JobSpec(dataset="tiny", loss=loss, hparams=tuple(sorted(hp.items())), mode=mode, seed=0, label_seed=1200,
                   split_seed=1200, backbone="resnet18:none", epochs=2, batch_size=2, lr=1e-3, val="clean",
                   early_stop="none")


def test_linear_mode_needs_the_map_cache_or_is_refused(tmp_path: Path) -> None:
    from spmlbench.errors import DataError
    from spmlbench.experiments.plan import check_requirements
    from spmlbench.losses import default_losses

    with pytest.raises(DataError, match="boostlu_ll_r in linear mode.*--maps' or use --mode e2e"):
        check_requirements([_job("boostlu_ll_r", mode="linear")], str(tmp_path))
    with pytest.raises(ConfigError, match="mime: trains the mime head.*--mode e2e"):
        check_requirements([_job("mime", mode="linear", expected_num_pos=1.0)], str(tmp_path))
    check_requirements([_job("boostlu_ll_r")], str(tmp_path))  # e2e: fine
    assert not {"boostlu_ll_r", "boostlu_ll_ct", "boostlu_ll_cp"} & set(default_losses())


@pytest.mark.parametrize("loss", ["boostlu_ll_r", pytest.param("boostlu_ll_cp", marks=pytest.mark.slow)])
def test_e2e_trains_the_boostlu_head(loss: str, home: Path, tmp_path: Path) -> None:
    from test_pseudo_labels import _dataset

    from spmlbench.experiments.recipes import job_recipes
    from spmlbench.train import e2e

    _dataset(home, n=10)
    job = _job(loss, alpha=5.0)
    recipe, _ = job_recipes(job, {"eval_batch_size": 4})
    res = e2e.train_e2e(job, recipe=recipe, home=home, device="cpu", workdir=tmp_path / loss, workers=0,
                        image_size=32)
    assert res.ok and res.epochs_run == 2 and res.settings["head"] == "boostlu", res.error
    state = torch.load(tmp_path / loss / "last.pt", weights_only=False)["model"]
    assert state["head.weight"].shape == (3, 512) and "backbone.0.weight" in state  # the conv stem, no avgpool


# --------------------------------------------------------------------------------------------- frozen variant
def test_map_cache_round_trip_and_resume(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np
    from test_pseudo_labels import _dataset

    from spmlbench.features import maps as maps_mod
    from spmlbench.features.backbones import feature_map, get_backbone

    images = _dataset(home, n=7)
    spec = get_backbone("resnet18")
    real = spec.load_image
    calls: list[str] = []
    broken = [True]

    def flaky(path, size=None):
        calls.append(str(path))
        if len(calls) == 4 and broken[0]:  # the second batch of 3, once
            broken[0] = False
            raise KeyboardInterrupt
        return real(path, size)

    monkeypatch.setattr(type(spec), "load_image", lambda self, path, size=None: flaky(path, size))
    with pytest.raises(KeyboardInterrupt):
        maps_mod.extract_maps("tiny", "resnet18", home=home, weights="none", image_size=32, batch_size=3)
    assert not maps_mod.maps_path("tiny", "resnet18", home).exists()
    calls.clear()
    path = maps_mod.extract_maps("tiny", "resnet18", home=home, weights="none", image_size=32, batch_size=3)
    assert len(calls) == 4  # rows 3-6 only: the first batch was kept
    monkeypatch.undo()
    maps = maps_mod.load_maps("tiny", "resnet18", home)
    assert maps.shape == (7, 512, 1, 1) and maps.dtype == np.float16
    net = feature_map(spec.build("none")).eval()
    x = torch.from_numpy(np.stack([spec.load_image(home / "tiny" / "images" / i, 32) for i in images]))
    with torch.no_grad():  # in the extractor's batches (a convolution's rounding may depend on the batch)
        want = np.concatenate([net(spec.prepare(x[lo:lo + 3])).numpy().astype(np.float16) for lo in (0, 3, 6)])
    assert np.array_equal(np.asarray(maps), want)  # exact: the float16 values the network gave
    meta = __import__("json").loads(path.with_suffix(".json").read_text())
    assert meta["bytes_per_image"] == 512 * 2 and len(meta["sha256"]) == 64


def test_frozen_boostlu_with_alpha_one_is_the_linear_probe() -> None:
    import numpy as np
    from test_linear_support import synthetic_data

    from spmlbench.train.trainers.cached import train_cached_head
    from spmlbench.train.configs import LinearData, TrainConfig
    from spmlbench.train.linear import train_linear

    base = synthetic_data(d=12, c=4)
    n = [base.x_train.shape[0], base.x_val.shape[0], base.x_test.shape[0]]
    g = torch.Generator().manual_seed(0)
    maps = (torch.randn(sum(n), 12, 2, 2, generator=g) + 0.5).half()
    pooled = maps.float().mean(dim=(2, 3))
    rows = {"train": np.arange(n[0]), "val": np.arange(n[0], n[0] + n[1]), "test": np.arange(n[0] + n[1], sum(n))}
    data = LinearData(base.dataset, *(pooled[torch.as_tensor(rows[s])] for s in ("train", "val", "test")),
                      base.y_train, base.s_train, base.y_val, base.s_val, base.y_test, maps=maps.numpy(),
                      split_rows=rows)
    common = dict(seed=2, lr=1e-2, batch_size=8, epochs=4)
    boost = train_cached_head(data, TrainConfig(loss="boostlu_ll_r", hparams=(("alpha", 1.0),), **common))
    plain = train_linear(data, [TrainConfig(loss="ll_r", **common)])[0]
    assert boost.val_map == pytest.approx(plain.val_map, abs=1e-3)  # float rounding only (autograd vs fused)
    assert boost.test_map == pytest.approx(plain.test_map, abs=1e-3)
    boosted = train_cached_head(data, TrainConfig(loss="boostlu_ll_r", hparams=(("alpha", 5.0),), **common))
    assert boosted.val_map != boost.val_map


@pytest.mark.slow
def test_linear_init_hands_the_linear_head_to_the_boostlu_head(home: Path, tmp_path: Path) -> None:
    from test_pseudo_labels import _dataset

    from spmlbench.experiments.recipes import job_recipes
    from spmlbench.train import e2e, linear_init

    _dataset(home, n=10)
    job = _job("boostlu_ll_r", mode="linear-init", alpha=5.0)
    recipe, linear_recipe = job_recipes(job, {"eval_batch_size": 4}, {"epochs": 2})
    start: dict[str, torch.Tensor] = {}
    res = linear_init.train_linear_init(
        job, recipe=recipe, linear_recipe=linear_recipe, home=home, device="cpu", workdir=tmp_path / "w", workers=0,
        image_size=32, features=torch.randn(10, 512, generator=torch.Generator().manual_seed(0)),
        hooks=e2e.Hooks(on_start=lambda ctx: start.update(W=ctx.model.head.weight.detach().clone())))
    assert res.ok and res.settings["head"] == "boostlu", res.error
    linear = torch.load(tmp_path / "w" / "linear.pt", weights_only=False)
    assert torch.equal(start["W"], linear["head"]["weight"])  # the linear phase's best head is the CAM's start
