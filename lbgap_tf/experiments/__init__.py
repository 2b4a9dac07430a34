"""Experiments built on training and measuring: the paper's figures (each a frozen config,
rows with provenance and PNGs) and accelerator setups compared."""
