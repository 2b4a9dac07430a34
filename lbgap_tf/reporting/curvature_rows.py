"""Curvature measurements as CSV rows (``curvature.csv``), with the resume rule of sharpness.

One row is one ``measures.curvature.CurvatureResult`` (one measure with its settings on one
trained run and evaluation set), joined with the run's provenance (the columns of
``sharpness_rows.RUN_PROVENANCE``) and where it was measured. ``measurement_key`` names a
measurement by its settings, not its outcome: the measure, its settings as compact JSON, the
evaluation examples, batch and subset seed. A binary skips every measurement whose key is in
``curvature.csv`` already, so a rerun repeats nothing measured. Lists (eigenvalues, SLQ nodes
and weights) are JSON arrays in one cell. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from lbgap_tf import results
from lbgap_tf.sharpness_rows import RUN_PROVENANCE

CURVATURE_COLUMNS = RUN_PROVENANCE + (
    "benchmark", "measure", "settings", "value", "standard_error", "converged", "values",
    "weights", "max_loss", "loss", "gradient_norm", "hvps", "gradient_evals", "hvp_method",
    "hvp_costs", "gradient_pass_cpu_s", "cpu_seconds", "seconds", "pass_equivalents",
    "message", "num_weights", "eval_examples", "eval_batch_size", "subset_seed", "bn_mode",
    "strategy", "replicas", "device_kind", "precision", "tf_version", "keras_version",
    "git_revision", "finished_at", "nondefault_flags",
)

KEY_COLUMNS = ("run_id", "measure", "settings", "eval_examples", "eval_batch_size",
               "subset_seed")


def settings_text(settings: Mapping[str, object]) -> str:
    """A measure's settings as they key a row: compact JSON, keys sorted."""
    return json.dumps(dict(settings), sort_keys=True, separators=(",", ":"))


def measurement_key(run_id: str, measure: str, settings: Mapping[str, object], *,
                    eval_examples: int, eval_batch_size: int, subset_seed: int | None
                    ) -> tuple[str, ...]:
    """The key of a measurement in the string form CSV rows give back (``KEY_COLUMNS``).

    ``subset_seed`` is None when the evaluation set is the whole training set.
    """
    return (str(run_id), measure, settings_text(settings), str(eval_examples),
            str(eval_batch_size), "" if subset_seed is None else str(subset_seed))


def row_key(row: Mapping[str, str]) -> tuple[str, ...]:
    """``measurement_key`` of a row read back from ``curvature.csv``."""
    return tuple(row[column] for column in KEY_COLUMNS)


def finished_keys(rows: Iterable[Mapping[str, str]]) -> set[tuple[str, ...]]:
    """The keys of the measurements already in ``rows``."""
    return {row_key(row) for row in rows}


def _json_list(values) -> str:
    return json.dumps([float(v) for v in values], separators=(",", ":"))


def curvature_row(result, problem, run_row: Mapping[str, object], *, benchmark: str,
                  subset_seed: int | None, strategy: Mapping[str, object], precision: str,
                  nondefault_flags: str = "") -> dict:
    """The ``curvature.csv`` row of ``result`` (a ``CurvatureResult``) measured by
    ``problem`` (its ``CurvatureProblem``) on the run ``run_row``.

    ``strategy`` describes where the measurement ran (``distribute.describe``), ``precision``
    is the model's dtype policy.
    """
    row = {column: run_row[column] for column in RUN_PROVENANCE}
    costs = {method: round(cost, 4) for method, cost in sorted(problem.hvp_costs.items())}
    row.update({
        "benchmark": benchmark,
        "measure": result.measure,
        "settings": settings_text(result.settings),
        "value": result.value,
        "standard_error": result.standard_error,
        "converged": result.converged,
        "values": _json_list(result.values) if result.values else "",
        "weights": _json_list(result.weights) if result.weights else "",
        "max_loss": result.max_loss,
        "loss": problem.loss,
        "gradient_norm": problem.gradient_norm,
        "hvps": result.hvps,
        "gradient_evals": result.gradient_evals,
        "hvp_method": problem.hvp_method if result.hvps else "",
        "hvp_costs": json.dumps(costs, separators=(",", ":")),
        "gradient_pass_cpu_s": round(problem.gradient_cost.cpu_seconds, 4),
        "cpu_seconds": round(result.cpu_seconds, 3),
        "seconds": round(result.seconds, 3),
        "pass_equivalents": round(result.pass_equivalents, 2),
        "message": result.message + (f"; {problem.hvp_note}" if problem.hvp_note
                                     and result.hvps else ""),
        "num_weights": problem.num_weights,
        "eval_examples": problem.eval_examples,
        "eval_batch_size": problem.eval_batch_size,
        "subset_seed": subset_seed,
        "bn_mode": problem.bn_mode,
    })
    row.update(results.measured_where(strategy, precision, nondefault_flags))
    return row
