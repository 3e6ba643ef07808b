"""The built-in losses, one module each: hyperparameters, the formula as the paper writes it, metadata.

Every module here is imported (and so registered) by :func:`spmlbench.losses.load_builtins`.
"""
