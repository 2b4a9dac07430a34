"""The paper's figures as experiments: each a frozen config, rows with provenance and PNGs."""
