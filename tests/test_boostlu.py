"""BoostLU (Kim et al., CVPR 2023): the boosted-CAM head by hand, alpha = 1 is the plain linear head, the
LL losses on it through the end-to-end trainer, and linear mode refused (no feature map there)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spmlbench.errors import ConfigError
from spmlbench.experiments.jobs import JobSpec
from spmlbench.train.e2e_model import BoostLUHead, build_model


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


def test_linear_mode_is_refused_before_anything_runs() -> None:
    from spmlbench.experiments.plan import check_pseudo_caches
    from spmlbench.losses import default_losses

    with pytest.raises(ConfigError, match="boostlu_ll_r: trains the boostlu head.*--mode e2e"):
        check_pseudo_caches([_job("boostlu_ll_r", mode="linear")], None)
    check_pseudo_caches([_job("boostlu_ll_r")], None)  # e2e: fine
    assert not {"boostlu_ll_r", "boostlu_ll_ct", "boostlu_ll_cp"} & set(default_losses())


@pytest.mark.parametrize("loss", ["boostlu_ll_r", "boostlu_ll_cp"])
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
