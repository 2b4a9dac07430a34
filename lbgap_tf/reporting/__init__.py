"""Reporting from result rows: figures (PNG) drawn from CSV rows alone, without TensorFlow."""
