"""Names of the distributions of Metric 2.1's random subspace A (documented in `sharpness`).

Kept apart from `sharpness` so that the CSV row, table and report modules, which key rows by
these names, import without TensorFlow.
"""

SUBSPACE_DISTRIBUTIONS = ("normal", "normal_1_over_p", "uniform", "uniform_unit_columns")
DEFAULT_SUBSPACE_DISTRIBUTION = "normal"
