"""Reporting from result rows, without TensorFlow: figures (PNG) drawn from CSV rows, and
result folders read back, matched and compared side by side (setups tables)."""
