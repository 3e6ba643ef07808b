"""spmlbench: single-positive multi-label learning benchmarks under one protocol."""

__version__ = "0.1.0"
