"""Sharpness measurements as CSV rows (``sharpness.csv``), shared by every binary.

One row is one ``SharpnessResult`` (one epsilon, space and solver on one trained run), joined
with the training run's provenance so the row stands on its own in pandas. ``measurement_key``
names a measurement independently of its outcome; a binary skips the measurements whose key
is already in ``sharpness.csv``, which makes reruns resume instead of repeat.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from lbgap_tf import results
from lbgap_tf.sharpness import SharpnessResult

# Columns copied from the training run's row (runs.csv).
RUN_PROVENANCE = ("run_id", "model", "dataset", "regime", "global_batch_size", "seed",
                  "train_loss", "train_accuracy", "test_accuracy")

SHARPNESS_COLUMNS = RUN_PROVENANCE + (
    "benchmark", "subspace", "subspace_dim", "subspace_seed", "epsilon", "solver", "max_iter",
    "sharpness", "loss", "max_loss", "gradient_norm", "iterations", "function_evals",
    "gradient_evals", "solver_message", "seconds", "num_weights", "eval_examples",
    "eval_batch_size", "bn_mode", "strategy", "replicas", "device_kind", "precision",
    "tf_version", "keras_version", "git_revision", "finished_at", "nondefault_flags",
)

# What identifies a measurement (its settings, not its outcome).
KEY_COLUMNS = ("run_id", "subspace", "subspace_dim", "subspace_seed", "epsilon", "solver",
               "max_iter", "eval_examples", "eval_batch_size")


def measurement_key(run_id: str, *, subspace_dim: int | None, subspace_seed: int,
                    epsilon: float, solver: str, max_iter: int, eval_examples: int,
                    eval_batch_size: int) -> tuple[str, ...]:
    """The key of a measurement in the string form CSV rows give back (see ``KEY_COLUMNS``).

    The subspace seed only matters for a random subspace and is blank for the full space.
    """
    subspace = "full" if subspace_dim is None else "random"
    return (run_id, subspace, "" if subspace_dim is None else str(subspace_dim),
            "" if subspace_dim is None else str(subspace_seed), repr(float(epsilon)), solver,
            str(max_iter), str(eval_examples), str(eval_batch_size))


def row_key(row: Mapping[str, str]) -> tuple[str, ...]:
    """``measurement_key`` of a row read back from ``sharpness.csv``."""
    return tuple(repr(float(row[c])) if c == "epsilon" else row[c] for c in KEY_COLUMNS)


def finished_keys(rows: Iterable[Mapping[str, str]]) -> set[tuple[str, ...]]:
    """The keys of the measurements already in ``rows``."""
    return {row_key(row) for row in rows}


def sharpness_row(result: SharpnessResult, run_row: Mapping[str, object], *, benchmark: str,
                  strategy: Mapping[str, object], precision: str, nondefault_flags: str = ""
                  ) -> dict:
    """The ``sharpness.csv`` row of ``result`` measured on the run ``run_row``.

    ``strategy`` describes where the measurement ran (``distribute.describe``), which may differ
    from where the run was trained; ``precision`` is the model's dtype policy.
    """
    provenance = results.provenance()
    full = result.subspace_dim is None
    row = {column: run_row[column] for column in RUN_PROVENANCE}
    row.update({
        "benchmark": benchmark,
        "subspace": "full" if full else "random",
        "subspace_dim": None if full else result.subspace_dim,
        "subspace_seed": None if full else result.seed,
        "epsilon": result.epsilon,
        "solver": result.solver,
        "max_iter": result.max_iter,
        "sharpness": result.value,
        "loss": result.loss,
        "max_loss": result.max_loss,
        "gradient_norm": result.gradient_norm,
        "iterations": result.iterations,
        "function_evals": result.function_evals,
        "gradient_evals": result.gradient_evals,
        "solver_message": result.message,
        "seconds": round(result.seconds, 3),
        "num_weights": result.num_weights,
        "eval_examples": result.eval_examples,
        "eval_batch_size": result.eval_batch_size,
        "bn_mode": result.bn_mode,
        "strategy": strategy["strategy"],
        "replicas": strategy["replicas"],
        "device_kind": strategy["device_kind"],
        "precision": precision,
        "tf_version": provenance["tf_version"],
        "keras_version": provenance["keras_version"],
        "git_revision": provenance["git_revision"],
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nondefault_flags": nondefault_flags,
    })
    return row
