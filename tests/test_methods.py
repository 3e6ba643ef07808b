"""Methods as compositions of registered components (docs/adding-a-method.md): head x loss [x trainer], asked for
capabilities, never decoded from names outside the components."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from spmlbench.errors import ConfigError
from spmlbench.experiments.jobs import expand_jobs
from spmlbench.heads import CACHED, HEADS, method_of
from spmlbench.losses import LOSSES, default_losses, register_loss, resolve_hparams
from spmlbench.losses.builtin.an import ANParams, an_loss

ROOT = Path(__file__).resolve().parents[1]
META = {"protocol": {"label_seed": 1200, "split_seed": 1200}, "expected_positives": {"computed": 1.5, "paper": None}}


def test_declared_methods_compose_a_head_a_loss_and_a_trainer() -> None:
    table = {name: (m.head.name, m.loss, m.linear_trainer(), m.reads_maps(), m.plain)
             for name in ("gr", "boostlu_ll_r", "boostlu_ll_cp", "mime", "mime_vib", "smile")
             for m in [method_of(name)]}
    assert table == {
        "gr": ("linear", "gr", None, False, True),
        "boostlu_ll_r": ("boostlu", "ll_r", CACHED, True, False),
        "boostlu_ll_cp": ("boostlu", "ll_cp", CACHED, True, False),
        "mime": ("mime", "mime", CACHED, False, False),  # no linear mode: never asked
        "mime_vib": ("vib", "mime", CACHED, False, False),
        "smile": ("smile", "smile", "smile", False, False),
    }
    assert set(HEADS.names()) >= {"linear", "boostlu", "mime", "vib", "smile"}
    assert default_losses() == ["bce", "an", "an_ls", "wan", "epr", "role", "ll_r", "ll_ct", "ll_cp", "em", "em_apl",
                                "focal", "asl", "hill", "splc", "gr"]


def test_a_method_takes_its_loss_and_its_head_options() -> None:
    hp = resolve_hparams("boostlu_ll_r", "voc")
    assert hp.as_dict() == {"alpha": 5.0, "delta_rel": 0.5} and LOSSES.get("boostlu_ll_r").formula.__name__ == "ll_r_loss"
    assert resolve_hparams("boostlu_ll_r", "voc", alpha=3).alpha == 3.0
    with pytest.raises(ConfigError, match=r"boostlu_ll_r.alpha=0: must be > 0"):  # the head's own check
        resolve_hparams("boostlu_ll_r", "voc", alpha=0)
    with pytest.raises(ConfigError, match=r"boostlu_ll_r.delta_rel=-1"):  # the loss's own check
        resolve_hparams("boostlu_ll_r", "voc", delta_rel=-1)
    mime = {f.name for f in dataclasses.fields(LOSSES.get("mime").params)}
    assert {"z_dim", "samples", "beta", "warmup_epoch", "prior"} <= mime
    assert LOSSES.get("boostlu_ll_r").title == "BoostLU + large loss rejection"
    assert LOSSES.get("boostlu_ll_r").version == LOSSES.get("ll_r").version == 2


def test_job_ids_are_those_of_the_former_loss_files() -> None:
    """Measured on the tree before methods were compositions (the boostlu_ll_* and mime_vib loss files)."""
    ids = {}
    for mode, losses in (("e2e", ["boostlu_ll_r", "boostlu_ll_ct", "boostlu_ll_cp", "mime", "smile", "gr"]),
                         ("linear", ["boostlu_ll_r", "mime_vib", "smile", "an"])):
        for j in expand_jobs(dataset="voc", losses=losses, seeds=[0], meta=META, backbone="resnet50", mode=mode):
            ids.setdefault(f"{mode}:{j.loss}", j.job_id)
    assert ids == {"e2e:boostlu_ll_cp": "b34d11fdbfe20dd4", "e2e:boostlu_ll_ct": "cb8d211aa031bff6",
                   "e2e:boostlu_ll_r": "b481f2adc3e9d74b", "e2e:gr": "325ebe028e5cde8f", "e2e:mime": "4eca105db16844d7",
                   "e2e:smile": "a3d80d127756b893", "linear:an": "6e722824ec9a52ef",
                   "linear:boostlu_ll_r": "4ce21c8e0beb98b6", "linear:mime_vib": "d007a8e9b9e2b8e6",
                   "linear:smile": "77b1ba145fb8bf2f"}


def test_any_head_with_any_loss_by_name() -> None:
    m = method_of("boostlu_an")
    assert (m.head.name, m.loss, m.supports("linear"), m.supports("linear-init")) == ("boostlu", "an", None, None)
    d = LOSSES.get("boostlu_an")
    assert d.title == "Assume negative (boostlu head)" and d.formula is an_loss and issubclass(d.params, ANParams)
    assert resolve_hparams("boostlu_an").as_dict() == {"alpha": 5.0, "eps": 1e-5}
    with pytest.raises(ConfigError, match="unknown loss 'boostlu_nope'"):
        LOSSES.get("boostlu_nope")
    assert "boostlu_an" not in LOSSES.names()  # composed on first use, found by lookups, never listed


def test_modes_refused_by_capability_with_the_modes_that_work() -> None:
    assert method_of("mime").supports("linear") == (
        "mime: trains the mime head on the backbone's feature map, which linear mode's pooled features do not have; "
        "run it with --mode e2e")
    assert method_of("smile").supports("linear-init") == (
        "smile: LinearInit's linear head does not load into the smile head; run it with --mode e2e or --mode linear")
    assert method_of("mime_vib").supports("e2e") == (
        "mime_vib: has its own model and trainer on cached features; run it with --mode linear")
    assert all(method_of("gr").supports(m) is None for m in ("linear", "e2e", "linear-init"))


def test_a_loss_may_not_take_a_method_name() -> None:
    with pytest.raises(ConfigError, match="loss name 'boostlu_mine' is method 'boostlu_mine' .head 'boostlu' "
                                          "with loss 'mine'.; give the loss a name"):
        register_loss("boostlu_mine", params=ANParams, formula=an_loss)
    assert "boostlu_mine" not in LOSSES.names()


def test_no_method_name_is_decoded_outside_the_components() -> None:
    """The issue's grep: no comparison of a method (or mode) name with a string in experiments, train, report."""
    pattern = r'== *"(smile|mime|boostlu|vlpl|aevlp|linear)"|in \("(smile|mime|boostlu)'
    res = subprocess.run(["grep", "-rnE", pattern, "spmlbench/experiments", "spmlbench/train", "spmlbench/report"],
                         cwd=ROOT, capture_output=True, text=True)
    assert res.stdout == "", res.stdout


def test_heads_load_without_the_losses_package() -> None:
    """The heads sit below the losses (layers): importing them loads no loss."""
    code = "import sys, spmlbench.heads; print(any(m.startswith('spmlbench.losses') for m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "False", res.stderr
