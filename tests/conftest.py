"""Shared fixtures: an isolated data home and cache folder, a CLI runner that returns (exit code, stdout, stderr)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True, scope="session")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Caches (the loss cards of ``spmlbench losses``) go to a temporary folder, not the user's."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPMLBENCH_CACHE", str(folder))
        yield folder


@pytest.fixture
def restore_registry() -> Iterator[None]:
    """A test that loads plugins leaves the registries as it found them: the losses, the methods composed on
    first use (which a plugin load forgets) and the heads."""
    from spmlbench.heads import HEADS
    from spmlbench.losses import LOSSES

    LOSSES.ensure_loaded()
    losses, unlisted, heads = dict(LOSSES._entries), set(LOSSES._unlisted), dict(HEADS._entries)
    yield
    LOSSES._entries.clear()
    LOSSES._entries.update(losses)
    LOSSES._unlisted.clear()
    LOSSES._unlisted.update(unlisted)
    HEADS._entries.clear()
    HEADS._entries.update(heads)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty SPMLBENCH_HOME for this test."""
    h = tmp_path / "spml_home"
    h.mkdir()
    monkeypatch.setenv("SPMLBENCH_HOME", str(h))
    return h


@dataclasses.dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``spmlbench <args>`` in-process; returns CliResult(code, out, err)."""
    from spmlbench.cli import main

    monkeypatch.setenv("COLUMNS", "200")  # wide rich tables, no wrapping in assertions

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu`` tests without CUDA, ``ray`` and ``clip`` tests without their extras."""
    import importlib.util

    import torch

    no_cuda = pytest.mark.skip(reason="needs a CUDA device")
    no_ray = pytest.mark.skip(reason="needs the ray extra: pip install -e '.[ray]'")
    has_ray = importlib.util.find_spec("ray") is not None
    no_clip = pytest.mark.skip(reason="needs the clip extra: pip install -e '.[clip]'")
    has_clip = importlib.util.find_spec("open_clip") is not None
    for item in items:
        if "clip" in item.keywords and not has_clip:
            item.add_marker(no_clip)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_cuda)
        if "ray" in item.keywords and not has_ray:
            item.add_marker(no_ray)
