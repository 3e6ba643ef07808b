"""One module per dataset: its adapter (raw files, format function, default backbone), registered on import.

Every module here is imported by :func:`spmlbench.data.registry.load_datasets`.
"""
