"""A researcher's own head as a plugin file: it composes with any loss (``<head>_<loss>``), its source is in
the job id of every job on it (an edit re-runs them), it ships to worker processes, and it trains through
the CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from spmlbench.experiments.records import load_records
from spmlbench.heads import HEADS, method_of
from spmlbench.losses import LOSSES, resolve_hparams
from spmlbench.losses.plugins import load_plugin, source_of, sources_for

HEAD = '''
import dataclasses
import torch
from torch import nn
from spmlbench.heads import register_head
from spmlbench.hparams import HParams


@dataclasses.dataclass(frozen=True)
class Options(HParams):
    scale: float = {scale}


class ScaledLinear(nn.Linear):
    """A linear head whose logits are multiplied by ``scale``."""

    def __init__(self, dim, num_classes, scale):
        super().__init__(dim, num_classes)
        self.scale = scale

    def forward(self, x):
        return super().forward(x) * self.scale


def build(dim, num_classes, seed, options):
    torch.manual_seed(seed)
    return ScaledLinear(dim, num_classes, options.scale)


register_head("{name}", build=build, title="Scaled linear head", consumes="pooled", modes=("linear", "e2e"),
              options=Options)
'''


pytestmark = pytest.mark.usefixtures("restore_registry")  # every test starts and ends with the built-ins only


def write_head(tmp_path: Path, name: str = "scaled", scale: float = 2.0) -> Path:
    path = tmp_path / f"{name}_head.py"
    path.write_text(textwrap.dedent(HEAD.format(name=name, scale=scale)))
    return path


def test_a_plugin_head_composes_with_any_loss(tmp_path: Path) -> None:
    path = write_head(tmp_path)
    assert load_plugin(str(path)) == []  # a head, no loss
    head = HEADS.get("scaled")
    assert (head.origin, head.source_hash) == (str(path), source_of(path).sha)
    m = method_of("scaled_an")
    assert (m.head is head, m.loss, m.plain, m.supports("linear"), m.supports("e2e")) == \
        (True, "an", False, None, None)
    assert resolve_hparams("scaled_an", scale=3.0).as_dict() == {"eps": 1e-5, "scale": 3.0}
    composed = LOSSES.get("scaled_an")
    assert composed.origin == str(path) and len(composed.source_hash) == 16 and not LOSSES.get("an").source_hash
    module = head.build(4, 2, 0, head.make_options({"scale": 3.0}))
    x = torch.tensor([[1.0, -2.0, 0.5, 0.0]])
    assert torch.allclose(module(x), 3.0 * (x @ module.weight.T + module.bias))


def test_an_edited_head_gets_a_new_source_hash(tmp_path: Path) -> None:
    path = write_head(tmp_path)
    load_plugin(str(path))
    first = LOSSES.get("scaled_an").source_hash
    path.write_text(path.read_text().replace("scale: float = 2.0", "scale: float = 4.0"))
    load_plugin(str(path))
    assert LOSSES.get("scaled_an").source_hash != first  # composed anew, not the method composed before the edit
    assert resolve_hparams("scaled_an").scale == 4.0


def test_a_head_plugin_ships_to_a_fresh_process(tmp_path: Path) -> None:
    """What a worker process or Ray task does: install the shipped text; the file need not exist there."""
    path = write_head(tmp_path)
    load_plugin(str(path))
    (shipped,) = sources_for(["an", "gr", "scaled_an"])
    assert shipped == source_of(path)
    want = LOSSES.get("scaled_an").source_hash
    blob = tmp_path / "shipped.txt"
    blob.write_text(repr((shipped.path, shipped.text, shipped.sha)))
    path.unlink()
    probe = ("import ast, sys; from spmlbench.losses.plugins import PluginSource, install_all; "
             "from spmlbench.losses import LOSSES; "
             "install_all([PluginSource(*ast.literal_eval(open(sys.argv[1]).read()))]); "
             "print(LOSSES.get('scaled_an').source_hash)")
    done = subprocess.run([sys.executable, "-c", probe, str(blob)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == want


def test_a_plugin_head_trains_through_the_cli_and_an_edit_re_runs_its_jobs_only(cli, home: Path,
                                                                                 tmp_path: Path) -> None:
    path, out = write_head(tmp_path), tmp_path / "res"  # the embedded digits dataset, prepared on demand
    args = ("run", "--losses", "an,scaled_an", "--plugin", str(path), "--seeds", "0,1", "--recipe", "paper",
            "--epochs", "2", "--processes", "2", "--out", str(out))
    r = cli(*args)
    assert r.code == 0, r.err
    recs = load_records(out).set_index("loss")
    mine = recs.loc["scaled_an"]
    assert len(mine) == 2 and set(mine["status"]) == {"ok"} and (mine["test_map"] > 0).all()
    assert set(mine["loss_source"]) == {LOSSES.get("scaled_an").source_hash}
    assert set(mine["loss_origin"]) == {str(path)}
    assert recs.loc["an", "loss_source"].isna().all()
    rep = cli("report", "--results", str(out), "--plugin", str(path))
    assert rep.code == 0, rep.err
    path.write_text(path.read_text().replace("scale: float = 2.0", "scale: float = 0.5"))
    again = cli(*args)
    assert again.code == 0, again.err
    assert "2 finished jobs skipped" in again.out  # AN's; both scaled_an jobs train again
    assert load_records(out).set_index("loss").loc["scaled_an", "loss_source"].nunique() == 2
