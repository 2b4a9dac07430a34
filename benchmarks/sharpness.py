"""Measures the sharpness (Metric 2.1) of trained runs and appends rows to sharpness.csv.

    python -m benchmarks.sharpness --flagfile=flags/table3_sharpness.flags --output_dir=results/
    python -m benchmarks.sharpness --runs=F1-fashion_mnist-LB-b6000-s0-0123456789ab \\
        --subspace_dims=full,100 --solvers=lbfgsb,ascent --epsilons=1e-3,5e-4

Runs come from ``benchmarks.train``: ``--runs`` names run ids (``<output_dir>/runs/<id>/``) or
run directories; without it every completed run of ``<output_dir>/runs.csv`` is measured
(a run that diverged is skipped with a warning, and refused when named). For
each run, space (``full`` or a random subspace dimension p), solver and epsilon, the final
model (``model.keras``) is evaluated on the run's training set (or a fixed subset of
``--eval_examples``, drawn from ``--seed``, which also draws the random subspaces) and one row
goes to ``<output_dir>/sharpness.csv`` with the run's provenance (``eval_seed``: the subset's
seed). Measurements already in that file (same run, space, seed, epsilon, solver, iterations
and evaluation data) are skipped, so a rerun resumes; one that another process on the same
folder recorded while this one measured is not recorded twice (re-checked under the file's
lock). Every run, data set and setting is checked before the first measurement: bad
input ends in one stderr line and no row.
"""

import math
import os

from absl import flags, logging

from benchmarks import common, run_selection
from lbgap_tf import data, distribute, results, sharpness, sharpness_rows, train

FLAGS = flags.FLAGS
SHARPNESS_FILE = "sharpness.csv"
BENCHMARK = "sharpness"
FULL = "full"


def _is_float_above_zero(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value > 0


def _is_space(text: str) -> bool:
    return text == FULL or (text.isdigit() and int(text) >= 1)


flags.DEFINE_list("epsilons", ["1e-3", "5e-4"], "Box sizes eps (the paper: 1e-3, 5e-4).")
flags.DEFINE_list("subspace_dims", [FULL], "Spaces: 'full' (Table 3) and/or random subspace "
                  "dimensions p (Table 4: 100), e.g. full,100.")
flags.DEFINE_list("subspace_distributions", [sharpness.DEFAULT_SUBSPACE_DISTRIBUTION],
                  "Distributions of the random subspace matrix A, each with its own rows: "
                  "normal_1_over_p (N(0, 1/p) entries), normal (N(0, 1)), uniform (U[0, 1)), "
                  "uniform_unit_columns (U[0, 1) with unit-norm columns).")
flags.DEFINE_list("solvers", ["lbfgsb", "ascent"],
                  "Maximisers: lbfgsb (the paper's L-BFGS-B, zero tolerances), lbfgsb_scaled "
                  "(the same in the box-scaled variables y / r, bounds +-1) and/or ascent "
                  "(projected sign-gradient ascent in one tf.function).")
flags.DEFINE_integer("max_iter", 10, "Solver iterations (the paper: 10 L-BFGS-B iterations).")
run_selection.define_flags(receives="sharpness.csv",
                           seed_help="Seed of the random subspaces and of the evaluation subset.")
common.define_strategy_flags()
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags too.
flags.adopt_module_key_flags(run_selection)

flags.register_validator("epsilons", lambda v: bool(v) and all(map(_is_float_above_zero, v)),
                         message="--epsilons must be numbers > 0, e.g. 1e-3,5e-4")
flags.register_validator("subspace_dims", lambda v: bool(v) and all(map(_is_space, v)),
                         message="--subspace_dims must be 'full' and/or positive integers, "
                                 "e.g. full,100")
flags.register_validator("solvers", lambda v: bool(v) and set(v) <= set(sharpness.SOLVERS),
                         message=f"--solvers must be among {','.join(sharpness.SOLVERS)}")
flags.register_validator(
    "subspace_distributions",
    lambda v: bool(v) and set(v) <= set(sharpness.SUBSPACE_DISTRIBUTIONS),
    message=f"--subspace_distributions must be among {','.join(sharpness.SUBSPACE_DISTRIBUTIONS)}")
flags.register_validator("max_iter", lambda v: v >= 1, message="--max_iter must be >= 1")


def _dims() -> list[int | None]:
    return [None if text == FULL else int(text) for text in dict.fromkeys(FLAGS.subspace_dims)]


def _spaces() -> list[tuple[int | None, str | None]]:
    """(dimension, distribution of A) of every space to measure; (None, None) is the full
    space."""
    return [(dim, distribution) for dim in _dims()
            for distribution in ((None,) if dim is None
                                 else dict.fromkeys(FLAGS.subspace_distributions))]


def _check(runs: list[run_selection.Run]) -> None:
    for run in runs:
        num_weights = sum(int(math.prod(v.shape)) for v in run.model.trainable_variables)
        if num_weights == 0:
            raise ValueError(f"the model of run {run.run_id} has no trainable weights")
        for dim in _dims():
            if dim is not None and dim > num_weights:
                raise ValueError(f"--subspace_dims has {dim}, more than the {num_weights} "
                                 f"trainable weights of run {run.run_id}: pass at most "
                                 f"{num_weights}")
        run_selection.evaluation_settings(run, int(run.row["num_train"]))


def _measure(run: run_selection.Run, split: data.SplitData, strategy, finished: set,
             context: dict) -> int:
    """Measures what is missing for one run; returns the number of rows written."""
    examples, batch, eval_seed = run_selection.evaluation_settings(
        run, split.info.num_examples)
    epsilons = [float(e) for e in dict.fromkeys(FLAGS.epsilons)]
    problem, written = None, 0
    for dim, distribution in _spaces():
        space = None
        for solver in dict.fromkeys(FLAGS.solvers):
            missing = [eps for eps in epsilons if sharpness_rows.measurement_key(
                run.run_id, subspace_dim=dim, subspace_seed=FLAGS.seed, epsilon=eps,
                solver=solver, max_iter=FLAGS.max_iter, eval_examples=examples,
                eval_seed=eval_seed, eval_batch_size=batch,
                subspace_distribution=distribution or "") not in finished]
            label = f"{run.run_id}: {FULL if dim is None else f'p={dim} {distribution}'}, " \
                    f"{solver}"
            if not missing:
                logging.info("%s: measured earlier, skipped", label)
                continue
            if problem is None:
                problem = sharpness.SharpnessProblem(
                    run.model, split.features, split.labels, eval_batch_size=batch,
                    eval_examples=None if examples == split.info.num_examples else examples,
                    subset_seed=FLAGS.seed, strategy=strategy, bn_mode=run.config.bn_mode)
            space = space or problem.space(
                dim, seed=FLAGS.seed,
                distribution=distribution or sharpness.DEFAULT_SUBSPACE_DISTRIBUTION)
            for result in problem.measure(missing, space=space, solver=solver,
                                          max_iter=FLAGS.max_iter, seed=FLAGS.seed):
                row = sharpness_rows.sharpness_row(
                    result, run.row, benchmark=BENCHMARK, strategy=context["strategy"],
                    precision=run.config.precision, eval_seed=eval_seed,
                    nondefault_flags=context["flags"])
                if context["chief"] and not sharpness_rows.append(context["path"], row):
                    print(f"{label}, eps {result.epsilon:g}: recorded meanwhile by another "
                          "process, not recorded twice", flush=True)
                    continue
                written += 1
                print(f"{label}, eps {result.epsilon:g}: sharpness {result.value:.4g} "
                      f"(f {result.loss:.4g} -> {result.max_loss:.4g}, "
                      f"{result.function_evals} evaluations, {result.seconds:.1f} s; "
                      f"{result.message}); first-order term {result.first_order:.4g}, "
                      f"|grad f(x)| {result.gradient_norm:.3g}, |A y| "
                      f"{result.perturbation_norm:.3g}, |y|/|r| {result.radius_fraction:.3g}, "
                      f"on a face {result.face_fraction:.3g}", flush=True)
    return written


def main(argv):
    del argv  # Rejected by common.run when not empty.
    strategy = common.strategy()
    runs = run_selection.load_runs(FLAGS.runs, FLAGS.output_dir, strategy)
    _check(runs)
    splits: dict = {}
    for run in runs:  # Load (and check) every data set before the first measurement.
        run_selection.split_of(run.config, splits)
    path = os.path.join(FLAGS.output_dir, SHARPNESS_FILE)
    context = {"strategy": distribute.describe(strategy), "flags": common.nondefault_flags(),
               "chief": train.is_chief(strategy), "path": path}
    finished = sharpness_rows.finished_keys(results.read_rows(path))
    written = sum(_measure(run, run_selection.split_of(run.config, splits), strategy, finished,
                           context) for run in runs)
    print(f"{written} new sharpness row(s) for {len(runs)} run(s) -> {path}")


if __name__ == "__main__":
    common.run(main)
