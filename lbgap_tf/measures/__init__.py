"""Measures of trained weights: loss-landscape paths and slices (more measures join here)."""
