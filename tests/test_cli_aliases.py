"""One name per option across commands: ``run --datasets`` (``--dataset`` a hidden alias) and
``--weights`` for the backbone and the CLIP weights (``pseudo-labels --clip-pretrained`` a hidden alias)."""

from __future__ import annotations

import pytest

from spmlbench.cli.pseudo_cmd import _weights
from spmlbench.errors import ConfigError


def test_run_datasets_and_its_old_name_reach_the_same_check(cli, home) -> None:
    for flag in ("--datasets", "--dataset"):
        res = cli("run", flag, "voc", "--losses", "an", "--out", str(home / "r"))
        assert res.code == 2 and "spmlbench prepare voc" in res.err, flag  # voc is not prepared in this home
    res = cli("run", "--datasets", "nope", "--out", str(home / "r"))
    assert res.code == 2 and "nope" in res.err


def test_pseudo_labels_weights_and_its_old_name() -> None:
    assert _weights("openai", None) == "openai"
    assert _weights(None, "openai") == "openai"  # --clip-pretrained still accepted
    assert _weights("none", None) == "none"
    assert _weights("default", None) is None and _weights(None, None) is None  # the manifest's tag
    assert _weights("openai", "openai") == "openai"
    with pytest.raises(ConfigError, match="--weights laion2b and --clip-pretrained openai"):
        _weights("laion2b", "openai")


def test_pseudo_labels_cli_takes_both_names(cli, home) -> None:
    for flag in ("--weights", "--clip-pretrained"):
        res = cli("pseudo-labels", "voc", "--source", "vlpl", flag, "none")
        assert res.code == 2 and "spmlbench prepare voc" in res.err, flag
