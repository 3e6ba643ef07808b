"""Loss cards: ``spmlbench losses`` lists the built-ins from a cache without torch, with the registry's
output; a corrupt or stale cache is rebuilt; every card holds what the registry says of its loss."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from spmlbench.errors import ConfigError
from spmlbench.losses import DEFAULTS_FILE, LOSSES, defaults_source, get_loss, loss_info, resolve_hparams
from spmlbench.losses import cards as cards_mod
from spmlbench.losses.cards import CACHE_FILE, cache_key, cards_for_builtins

ARGVS = (["losses"], ["losses", "--json", "--dataset", "voc"], ["losses", "--dataset", "cub"])
PROBE = """
import sys
from spmlbench.cli import main
for argv in {argvs!r}:
    try:
        main(argv)
    except SystemExit as exc:
        assert not exc.code, exc.code
    print("\\f")
print("TORCH", "torch" in sys.modules, file=sys.stderr)
"""


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder; the path of the cards file in it."""
    monkeypatch.setenv("SPMLBENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / CACHE_FILE


def listing(cache: Path) -> tuple[list[str], bool]:
    """The outputs of ``ARGVS`` run in a fresh process, and whether it imported torch."""
    env = dict(os.environ, SPMLBENCH_CACHE=str(cache.parent), COLUMNS="200")
    res = subprocess.run([sys.executable, "-c", PROBE.format(argvs=ARGVS)], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    line = next(ln for ln in res.stderr.splitlines() if ln.startswith("TORCH"))
    return res.stdout.split("\f\n")[:-1], line == "TORCH True"


def test_listing_from_the_cache_imports_no_torch_and_equals_the_registry_listing(cache: Path, cli) -> None:
    cold, cold_torch = listing(cache)
    assert cold_torch and cache.is_file()  # built from the registry, then cached
    warm, warm_torch = listing(cache)
    assert not warm_torch, "a listing from the cached cards imported torch"
    assert warm == cold
    assert LOSSES.loaded  # so the in-process CLI lists from the registry
    assert [cli(*argv).out for argv in ARGVS] == cold


@pytest.mark.parametrize("garbage", [b"", b"{\"key\": ", b"\xff\xfe", b"[]", b"{\"key\": \"KEY\", \"cards\": 3}",
                                     b"{\"key\": \"KEY\", \"cards\": [{\"name\": \"gr\"}]}"])
def test_a_corrupt_cache_is_rebuilt(cache: Path, garbage: bytes) -> None:
    expected = cards_for_builtins()
    cache.write_bytes(garbage.replace(b"KEY", cache_key().encode()))
    assert cards_for_builtins() == expected
    assert json.loads(cache.read_text())["key"] == cache_key()


def test_the_cache_is_read_only_under_its_key(cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cards_for_builtins()
    cached = json.loads(cache.read_text())
    cached["cards"][0]["title"] = "read from the cache"
    cache.write_text(json.dumps(cached))
    assert cards_for_builtins()[0].title == "read from the cache"  # the key matches: no torch needed
    cache.write_text(json.dumps(dict(cached, key="0" * 64)))
    assert cards_for_builtins()[0].title != "read from the cache"  # another key: rebuilt

    copy, heads = tmp_path / "pkg" / "losses", tmp_path / "pkg" / "heads"
    for source, target in zip(cards_mod.SOURCE_DIRS, (copy, heads)):
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cards_mod, "SOURCE_DIRS", (copy, heads))
    key = cache_key()
    boostlu = heads / "builtin" / "boostlu.py"  # a head's methods are listed too
    boostlu.write_text(boostlu.read_text() + "\n")
    assert cache_key() != key
    key = cache_key()
    (copy / "builtin" / "__pycache__").mkdir(exist_ok=True)
    (copy / "builtin" / "__pycache__" / "gr.cpython-311.pyc").write_bytes(b"compiled")
    assert cache_key() == key  # compiled files are not inputs
    gr = copy / "builtin" / "gr.py"
    gr.write_text(gr.read_text() + "\n")
    assert cache_key() != key
    defaults = tmp_path / "loss_defaults.toml"
    defaults.write_bytes(DEFAULTS_FILE.read_bytes())
    monkeypatch.setattr(cards_mod, "DEFAULTS_FILE", defaults)
    key = cache_key()
    defaults.write_text(defaults.read_text() + "\n# edited\n")
    assert cache_key() != key


def test_an_unwritable_cache_folder_only_means_no_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("SPMLBENCH_CACHE", str(tmp_path / "file" / "cache"))  # under a file: cannot be made
    assert [c.name for c in cards_for_builtins()] == [n for n in LOSSES.names() if get_loss(n).builtin]


def test_every_cached_card_holds_what_the_registry_says(cache: Path) -> None:
    cards_for_builtins()
    cards = cards_for_builtins()  # read back from the JSON file
    assert cache.is_file()
    assert [c.name for c in cards] == [n for n in LOSSES.names() if get_loss(n).builtin]
    with open(DEFAULTS_FILE, "rb") as fh:
        datasets = [*tomllib.load(fh)["dataset"], "unlisted"]
    for card in cards:
        info = loss_info(card.name)
        plain = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(info).items()
                 if k != "defaults"}
        assert {k: v for k, v in dataclasses.asdict(card).items() if k in plain} == plain, card.name
        assert card.defaults == {k: list(v) if isinstance(v, tuple) else v for k, v in info.defaults.items()}
        assert card.order == get_loss(card.name).order
        assert card.origin.startswith(("spmlbench/losses/", "spmlbench/heads/")), card.origin  # a head's methods
        for ds in datasets:
            try:
                expected = resolve_hparams(card.name, ds).as_dict()
            except ConfigError:
                expected = None
            assert card.resolved_for(ds) == expected, (card.name, ds)
            assert card.source(ds) == defaults_source(card.name, ds), (card.name, ds)
