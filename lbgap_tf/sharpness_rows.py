"""Sharpness measurements as CSV rows (``sharpness.csv``), shared by every binary.

One row is one ``SharpnessResult`` (one epsilon, space and solver on one trained run), joined
with the training run's provenance so the row stands on its own in pandas. ``measurement_key``
names a measurement independently of its outcome; a binary skips the measurements whose key
is already in ``sharpness.csv``, which makes reruns resume instead of repeat, and ``append``
re-checks the key under the file's lock, so two processes that measured the same thing at
once record it once.

``eval_seed`` is the seed of the evaluation subset when f is evaluated on a subset of the
training set (``eval_examples`` below the training set's size), blank when on all of it: it
is part of the key, so a rerun with another seed measures on its own subset instead of
skipping, and every row (full space included) says which subset it used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from lbgap_tf import results
from lbgap_tf.subspaces import DEFAULT_SUBSPACE_DISTRIBUTION

if TYPE_CHECKING:  # The row modules import without TensorFlow.
    from lbgap_tf.sharpness import SharpnessResult

# Columns copied from the training run's row (runs.csv).
RUN_PROVENANCE = ("run_id", "model", "dataset", "regime", "global_batch_size", "seed",
                  "train_loss", "train_accuracy", "test_accuracy")

SHARPNESS_COLUMNS = RUN_PROVENANCE + (
    "benchmark", "subspace", "subspace_dim", "subspace_seed", "subspace_distribution",
    "epsilon", "solver", "max_iter", "sharpness", "loss", "max_loss", "gradient_norm",
    "perturbation_norm", "first_order", "loss_ratio", "radius_fraction", "face_fraction",
    "iterations", "function_evals",
    "gradient_evals", "solver_message", "seconds", "num_weights", "eval_examples",
    "eval_seed", "eval_batch_size", "bn_mode", "strategy", "replicas", "device_kind", "precision",
    "tf_version", "keras_version", "git_revision", "finished_at", "nondefault_flags",
)

# What identifies a measurement (its settings, not its outcome).
KEY_COLUMNS = ("run_id", "subspace", "subspace_dim", "subspace_seed", "subspace_distribution",
               "epsilon", "solver", "max_iter", "eval_examples", "eval_seed", "eval_batch_size")


def subset_seed(eval_examples: int, num_train: int, seed: int) -> int | None:
    """The seed of the evaluation subset: ``seed`` when f is evaluated on ``eval_examples``
    of the ``num_train`` training examples, None when on all of them."""
    return None if eval_examples >= num_train else seed


def measurement_key(run_id: str, *, subspace_dim: int | None, subspace_seed: int,
                    epsilon: float, solver: str, max_iter: int, eval_examples: int,
                    eval_seed: int | None, eval_batch_size: int,
                    subspace_distribution: str = DEFAULT_SUBSPACE_DISTRIBUTION
                    ) -> tuple[str, ...]:
    """The key of a measurement in the string form CSV rows give back (see ``KEY_COLUMNS``).

    The subspace seed and distribution only matter for a random subspace and are blank for
    the full space; ``eval_seed`` (see ``subset_seed``) is blank when f is evaluated on the
    whole training set.
    """
    full = subspace_dim is None
    return (run_id, "full" if full else "random", "" if full else str(subspace_dim),
            "" if full else str(subspace_seed), "" if full else subspace_distribution,
            repr(float(epsilon)), solver, str(max_iter), str(eval_examples),
            "" if eval_seed is None else str(eval_seed),
            str(eval_batch_size))


def row_key(row: Mapping[str, str]) -> tuple[str, ...]:
    """``measurement_key`` of a row read back from ``sharpness.csv`` (a column that a file of
    an older layout lacks reads as blank)."""
    return tuple(repr(float(row[c])) if c == "epsilon" else row.get(c, "")
                 for c in KEY_COLUMNS)


def append(path: str, row: Mapping[str, object]) -> bool:
    """Appends a ``sharpness_row`` to ``path`` unless a row of the same ``row_key`` is there,
    re-checked under the file's lock (``results.append_row``); returns whether it was
    appended (False: another process recorded the same measurement meanwhile)."""
    return results.append_row(path, row, key=row_key)


def finished_keys(rows: Iterable[Mapping[str, str]]) -> set[tuple[str, ...]]:
    """The keys of the measurements already in ``rows``."""
    return {row_key(row) for row in rows}


def sharpness_row(result: SharpnessResult, run_row: Mapping[str, object], *, benchmark: str,
                  strategy: Mapping[str, object], precision: str, eval_seed: int | None,
                  nondefault_flags: str = "") -> dict:
    """The ``sharpness.csv`` row of ``result`` measured on the run ``run_row``.

    ``strategy`` describes where the measurement ran (``distribute.describe``), which may differ
    from where the run was trained; ``precision`` is the model's dtype policy; ``eval_seed``
    the seed of the evaluation subset (None: the whole training set; see ``subset_seed``).
    """
    full = result.subspace_dim is None
    row = {column: run_row[column] for column in RUN_PROVENANCE}
    row.update({
        "benchmark": benchmark,
        "subspace": "full" if full else "random",
        "subspace_dim": None if full else result.subspace_dim,
        "subspace_seed": None if full else result.seed,
        "subspace_distribution": None if full else result.subspace_distribution,
        "epsilon": result.epsilon,
        "solver": result.solver,
        "max_iter": result.max_iter,
        "sharpness": result.value,
        "loss": result.loss,
        "max_loss": result.max_loss,
        "gradient_norm": result.gradient_norm,
        "perturbation_norm": result.perturbation_norm,
        "first_order": result.first_order,
        "loss_ratio": result.loss_ratio,
        "radius_fraction": result.radius_fraction,
        "face_fraction": result.face_fraction,
        "iterations": result.iterations,
        "function_evals": result.function_evals,
        "gradient_evals": result.gradient_evals,
        "solver_message": result.message,
        "seconds": round(result.seconds, 3),
        "num_weights": result.num_weights,
        "eval_examples": result.eval_examples,
        "eval_seed": eval_seed,
        "eval_batch_size": result.eval_batch_size,
        "bn_mode": result.bn_mode,
    })
    row.update(results.measured_where(strategy, precision, nondefault_flags))
    return row
