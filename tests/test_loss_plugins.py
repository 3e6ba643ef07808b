"""A researcher's own loss as a plugin: registration, values, CLI (linear, e2e, linear-init), job ids that
follow the plugin's source, worker processes, entry points, and one-line errors."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spmlbench.errors import ConfigError
from spmlbench.experiments.records import load_records
from spmlbench.losses import LOSSES, build_batched_loss, build_loss, list_losses
from spmlbench.losses.plugins import install_all, load_plugin, load_plugins, source_of, sources_for
from test_e2e import micro  # noqa: F401 - fixture: the two-conv "micro" backbone
from test_linear_support import write_dataset
from test_run_cli import one_line_error
from test_run_modes import E2E, write_images

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_loss.py"
PLUGIN = '''
import dataclasses
import torch
from spmlbench.losses import HParams, register_loss


@dataclasses.dataclass(frozen=True)
class P(HParams):
    scale: float = {scale}


@register_loss("{name}", params=P, title="t", paper="p", year=2026, citation="c")
def f(hp, logits, observed):
    return torch.where(observed, -torch.nn.functional.logsigmoid(logits), hp.scale * torch.sigmoid(logits))
'''


pytestmark = pytest.mark.usefixtures("restore_registry")  # every test starts and ends with the built-ins only


def write_plugin(tmp_path: Path, name: str = "mine", scale: float = 0.5, file: str = "plugin.py") -> Path:
    path = tmp_path / file
    path.write_text(textwrap.dedent(PLUGIN.format(name=name, scale=scale)))
    return path


def test_example_plugin_registers_and_matches_hand_derived_values() -> None:
    assert load_plugin(str(EXAMPLE)) == ["an_weighted"]
    assert list_losses()[-1] == "an_weighted" and LOSSES.get("an_weighted").origin == str(EXAMPLE)
    assert len(LOSSES.get("an_weighted").source_hash) == 16
    loss = build_loss("an_weighted", num_classes=2)
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = 0.5, 0.75
    value = loss(logits, torch.tensor([[True, False]]))
    want = (-math.log(0.5 + 1e-5) - 0.5 * math.log(0.25 + 1e-5)) / 2
    assert value.item() == pytest.approx(want, rel=1e-6)
    # the derived batched form: two configs broadcast, each as its own one-config loss
    batched = build_batched_loss("an_weighted", [{}, {"neg_weight": 2.0}], num_classes=2)
    got = batched(logits.expand(2, 1, 2), torch.tensor([[True, False]]))
    assert got[1].item() == pytest.approx((-math.log(0.5 + 1e-5) - 2.0 * math.log(0.25 + 1e-5)) / 2, rel=1e-6)
    assert not batched.fused_grad  # trained through autograd


def test_same_file_loads_once_an_edit_gets_a_new_source_hash(tmp_path: Path) -> None:
    path = write_plugin(tmp_path)
    assert load_plugin(str(path)) == ["mine"] and load_plugin(str(path)) == ["mine"]
    first = LOSSES.get("mine").source_hash
    path.write_text(path.read_text().replace("0.5", "0.25"))
    assert load_plugin(str(path)) == ["mine"]
    assert LOSSES.get("mine").source_hash != first and LOSSES.get("mine").params().scale == 0.25


def test_plugin_errors_are_one_line_with_file_and_fix(tmp_path: Path) -> None:
    dup = write_plugin(tmp_path, name="an", file="dup.py")
    with pytest.raises(ConfigError, match=r"dup.py: that name is already registered by spmlbench/losses/builtin/an.py"):
        load_plugin(str(dup))
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\n\ndef f(:\n")
    with pytest.raises(ConfigError, match=r"bad.py:3: the plugin does not compile"):
        load_plugin(str(bad))
    boom = tmp_path / "boom.py"
    boom.write_text("x = 1\nraise RuntimeError('no gpu here')\n")
    with pytest.raises(ConfigError, match=r"boom.py:2: import error in the plugin: RuntimeError: no gpu here"):
        load_plugin(str(boom))
    nothing = tmp_path / "nothing.py"
    nothing.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="registered no loss and no head"):
        load_plugin(str(nothing))
    no_formula = tmp_path / "noformula.py"
    no_formula.write_text(PLUGIN.format(name="nof", scale=0.5).split("@register_loss")[0] + "register_loss('nof', params=P, formula=3)\n")
    with pytest.raises(ConfigError, match=r"noformula.py: loss 'nof' has no formula"):
        load_plugin(str(no_formula))
    invalid = tmp_path / "invalid.py"
    invalid.write_text(PLUGIN.format(name="inv", scale=0.5).replace("scale: float = 0.5",
                       "scale: float = -1.0\n    def check(self):\n        self.positive('scale')"))
    with pytest.raises(ConfigError, match=r"loss 'inv': invalid default hyperparameters: inv.scale=-1: must be > 0"):
        load_plugin(str(invalid))
    with pytest.raises(ConfigError, match="no such file or importable module"):
        load_plugin("not_a_module_anywhere")
    with pytest.raises(ConfigError, match="cannot read the plugin"):
        load_plugin(str(tmp_path / "missing.py"))


def test_entry_point_group_registers_installed_losses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(tmp_path, name="from_ep", file="ep_plugin_mod.py")
    dist = tmp_path / "ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[spmlbench.losses]\nfrom_ep = ep_plugin_mod\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins() == ["from_ep"]
    assert LOSSES.get("from_ep").origin == str(tmp_path / "ep_plugin_mod.py")


def test_plugin_source_ships_to_a_fresh_registry(tmp_path: Path) -> None:
    """What a worker process or Ray task does: install the shipped text (the file need not exist there)."""
    path = write_plugin(tmp_path, name="shipped")
    load_plugin(str(path))
    (shipped,) = sources_for(["an", "shipped"])
    assert shipped == source_of(path)
    path.unlink()
    del LOSSES._entries["shipped"]
    del sys.modules[shipped.module]
    install_all([shipped])
    assert LOSSES.get("shipped").source_hash == shipped.sha and LOSSES.get("shipped").origin == str(path)


def test_cli_lists_and_runs_a_plugin_with_records_and_report(cli, home: Path, tmp_path: Path) -> None:
    res = cli("losses", "--plugin", str(EXAMPLE), "--json")
    assert res.code == 0, res.err
    row = json.loads(res.out)[-1]
    assert row["name"] == "an_weighted" and row["origin"] == str(EXAMPLE) and row["defaults"]["neg_weight"] == 0.5
    out = tmp_path / "res"  # the embedded digits dataset, prepared on demand (offline)
    args = ("run", "--losses", "an,an_weighted", "--plugin", str(EXAMPLE), "--seeds", "0,1", "--recipe", "paper",
            "--epochs", "2", "--set", "an_weighted.neg_weight=0.25", "--processes", "2", "--out", str(out))
    r = cli(*args)
    assert r.code == 0, r.err
    recs = load_records(out).set_index("loss")
    mine = recs.loc["an_weighted"]
    assert len(mine) == 2 and set(mine["status"]) == {"ok"} and (mine["test_map"] > 0).all()
    assert set(mine["loss_source"]) == {LOSSES.get("an_weighted").source_hash}
    assert set(mine["loss_origin"]) == {str(EXAMPLE)}
    assert json.loads(mine["hparams"].iloc[0])["neg_weight"] == 0.25
    assert recs.loc["an", "loss_source"].isna().all()  # built-ins: no source hash, job ids as before
    rep = cli("report", "--results", str(out))
    assert rep.code == 0, rep.err
    assert "an_weighted" in rep.out
    again = cli(*args)
    assert again.code == 0 and "4 finished jobs skipped" in again.out
    one_line_error(cli("run", "--losses", "an", "--plugin", str(tmp_path / "nope.py"), "--out", str(out)),
                   "nope.py", "cannot read the plugin")


def test_an_edited_plugin_re_runs_its_jobs_only(cli, home: Path, tmp_path: Path) -> None:
    write_dataset(home, name="digits", n=120)
    path, out = write_plugin(tmp_path, name="edited"), tmp_path / "res"
    args = ("run", "--losses", "an,edited", "--plugin", str(path), "--seeds", "0", "--recipe", "paper", "--epochs", "1",
            "--backbone", "resnet50", "--out", str(out))
    assert cli(*args).code == 0
    first = set(load_records(out)["job_id"])
    path.write_text(path.read_text().replace("scale: float = 0.5", "scale: float = 0.75"))
    r = cli(*args)
    assert r.code == 0, r.err
    assert "1 finished job skipped" in r.out  # the built-in AN job
    recs = load_records(out)
    assert len(recs) == 3 and len(set(recs["job_id"]) - first) == 1
    assert recs.set_index("loss").loc["edited", "loss_source"].nunique() == 2


@pytest.mark.parametrize("mode", ["e2e", "linear-init"])
def test_plugin_runs_end_to_end(cli, home: Path, tmp_path: Path, micro: str, mode: str) -> None:  # noqa: F811
    write_images(home)
    out = tmp_path / "res"
    args = [a if a != "an" else "an_weighted" for a in E2E]
    r = cli("run", *args, "--plugin", str(EXAMPLE), "--mode", mode, "--out", str(out))
    assert r.code == 0, r.err
    rec = load_records(out).iloc[0]
    assert rec["loss"] == "an_weighted" and rec["status"] == "ok" and rec["mode"] == mode
    assert rec["loss_source"] == LOSSES.get("an_weighted").source_hash


def test_docs_show_the_example_as_it_is() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "adding-a-loss.md").read_text()
    block = doc.split("```python\n", 1)[1].split("```", 1)[0]
    code = EXAMPLE.read_text()
    assert block.strip() in code and code.index(block.strip()) > 0  # the file = its docstring + the block
