"""CLI commands of this module (placeholder until its issue lands)."""

from __future__ import annotations

from spmlbench.cli.app import app  # noqa: F401
