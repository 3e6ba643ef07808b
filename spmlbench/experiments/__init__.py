"""Experiments: job specs and ids, result records, the runner that skips finished jobs and claims the rest."""
