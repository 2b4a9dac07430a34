"""Measures the Hessian spectrum and adaptive sharpness of trained runs -> curvature.csv.

    python -m benchmarks.curvature --output_dir=results/train_cpu --eval_examples=10000
    python -m benchmarks.curvature --runs=F1-fashion_mnist-LB-b6000-s0-0123456789ab \\
        --measures=top_eigenvalues,trace --k=5 --trace_tol=0.05

Runs are selected as by ``benchmarks.sharpness`` (``--runs`` names run ids or run
directories; default: every completed run of ``<output_dir>/runs.csv``) and evaluated on the
same data: the run's training set, or the fixed subset of ``--eval_examples`` drawn from
``--seed``, in the GLOBAL evaluation batch of the run (or ``--eval_batch_size``), so the
numbers compare with ``sharpness.csv``. For every run and measure (``--measures``: the top-k
Hessian eigenvalues, the smallest one, the Hutchinson trace, the SLQ spectral density, and
adaptive sharpness in the L-infinity box and the L2 ellipsoid) one row with the run's
provenance goes to ``<output_dir>/curvature.csv``; measurements already there (same run,
measure, settings and evaluation data) are skipped, so a rerun resumes. When density rows
exist, ``spectral_density.csv`` and ``spectral_density.png`` (SB and LB overlaid) are derived
from them. Every run, data set and setting is checked before the first measurement: bad input
ends in one stderr line and no row.
"""

import math
import os

from absl import flags, logging

from benchmarks import common, run_selection
from lbgap_tf import distribute, results, train
from lbgap_tf.experiments.common import training_subset
from lbgap_tf.measures import curvature
from lbgap_tf.reporting import curvature_rows, spectral_density

FLAGS = flags.FLAGS
CURVATURE_FILE = "curvature.csv"
DENSITY_CSV, DENSITY_PNG = "spectral_density.csv", "spectral_density.png"
BENCHMARK = "curvature"
DEFAULTS = curvature.CurvatureConfig()

flags.DEFINE_list("measures", list(curvature.MEASURES),
                  "Measures: top_eigenvalues (eigsh, which=LA), min_eigenvalue (which=SA), "
                  "trace (Hutchinson), density (stochastic Lanczos quadrature), adaptive_linf "
                  "and adaptive_l2 (adaptive sharpness).")
flags.DEFINE_integer("k", DEFAULTS.k, "Number of top Hessian eigenvalues.")
flags.DEFINE_float("eigen_tol", DEFAULTS.eigen_tol, "eigsh relative tolerance.")
flags.DEFINE_integer("eigen_max_hvps", DEFAULTS.eigen_max_hvps,
                     "About the most Hessian-vector products one eigsh call may use.")
flags.DEFINE_float("trace_tol", DEFAULTS.trace_tol, "Hutchinson stops when its relative "
                   "standard error is at most this (after --trace_min_probes).")
flags.DEFINE_integer("trace_min_probes", DEFAULTS.trace_min_probes,
                     "Rademacher probes before the trace may stop.")
flags.DEFINE_integer("trace_max_probes", DEFAULTS.trace_max_probes,
                     "Most Rademacher probes of the trace.")
flags.DEFINE_integer("lanczos_steps", DEFAULTS.lanczos_steps, "Lanczos steps per SLQ probe.")
flags.DEFINE_integer("density_probes", DEFAULTS.density_probes, "SLQ probes.")
flags.DEFINE_float("rho", DEFAULTS.rho_linf, "Adaptive sharpness, L-infinity: the box "
                   "|delta_i| <= rho |w_i| (Metric 2.1's box is eps (|w_i| + 1)).")
flags.DEFINE_float("rho_l2", DEFAULTS.rho_l2, "Adaptive sharpness, L2: the ellipsoid "
                   "||delta / |w| ||_2 <= rho_l2.")
flags.DEFINE_integer("ascent_steps", DEFAULTS.ascent_steps,
                     "Steps of the adaptive-sharpness ascents.")
flags.DEFINE_enum("hvp_method", "auto", ("auto",) + curvature.HVP_METHODS,
                  "Hessian-vector products: auto times both methods and keeps the faster.")
run_selection.define_flags(
    receives="curvature.csv and the spectral density CSV and PNG",
    seed_help="Seed of the probes, of eigsh's start vector and of the evaluation subset.")
common.define_strategy_flags()
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags too.
flags.adopt_module_key_flags(run_selection)


def _positive(name: str) -> None:
    flags.register_validator(name, lambda v: v is not None and v > 0 and math.isfinite(v),
                             message=f"--{name} must be > 0")


for _name in ("k", "eigen_tol", "eigen_max_hvps", "trace_tol", "trace_min_probes",
              "trace_max_probes", "lanczos_steps", "density_probes", "rho", "rho_l2",
              "ascent_steps"):
    _positive(_name)
flags.register_validator("measures", lambda v: bool(v) and set(v) <= set(curvature.MEASURES),
                         message=f"--measures must be among {','.join(curvature.MEASURES)}")


def _config() -> curvature.CurvatureConfig:
    return curvature.CurvatureConfig(
        measures=tuple(FLAGS.measures), k=FLAGS.k, eigen_tol=FLAGS.eigen_tol,
        eigen_max_hvps=FLAGS.eigen_max_hvps, trace_tol=FLAGS.trace_tol,
        trace_min_probes=FLAGS.trace_min_probes, trace_max_probes=FLAGS.trace_max_probes,
        lanczos_steps=FLAGS.lanczos_steps, density_probes=FLAGS.density_probes,
        rho_linf=FLAGS.rho, rho_l2=FLAGS.rho_l2, ascent_steps=FLAGS.ascent_steps,
        seed=FLAGS.seed)


def _check(runs: list[run_selection.Run], config: curvature.CurvatureConfig) -> None:
    for run in runs:
        num_weights = sum(int(math.prod(v.shape)) for v in run.model.trainable_variables)
        try:
            config.check_against(num_weights)
        except curvature.CurvatureError as error:
            raise ValueError(f"run {run.run_id}: {error}") from None
        run_selection.evaluation_settings(run, int(run.row["num_train"]))


def _measure(run, split, strategy, config, finished: set, context: dict) -> int:
    """Measures what is missing for one run; returns the number of rows written."""
    examples, batch, subset_seed = run_selection.evaluation_settings(
        run, split.info.num_examples)
    missing = [m for m in config.measures if curvature_rows.measurement_key(
        run.run_id, m, config.settings(m), eval_examples=examples, eval_batch_size=batch,
        subset_seed=subset_seed) not in finished]
    for measure in config.measures:
        if measure not in missing:
            logging.info("%s: %s measured earlier, skipped", run.run_id, measure)
    if not missing:
        return 0
    features, labels = training_subset(split, examples, FLAGS.seed)
    problem = curvature.CurvatureProblem(
        run.model, features, labels, eval_batch_size=batch, strategy=strategy,
        bn_mode=run.config.bn_mode, hvp_method=FLAGS.hvp_method)
    costs = ", ".join(f"{m} {c:.2f}" for m, c in problem.hvp_costs.items())
    print(f"{run.run_id}: f {problem.loss:.4g}, |grad| {problem.gradient_norm:.3g}, gradient "
          f"pass {problem.gradient_cost.cpu_seconds:.2f} CPU s; one HVP in gradient passes: "
          f"{costs} -> {problem.hvp_method}", flush=True)
    written = 0
    for measure in missing:
        result = problem.measure(measure, config)
        row = curvature_rows.curvature_row(
            result, problem, run.row, benchmark=BENCHMARK, subset_seed=subset_seed,
            strategy=context["strategy"], precision=run.config.precision,
            nondefault_flags=context["flags"])
        # Keyed: a process that measured the same thing meanwhile keeps its row, not both.
        if context["chief"] and results.append_row(context["path"], row,
                                                   key=curvature_rows.row_key):
            written += 1
        error = "" if result.standard_error is None else f" ± {result.standard_error:.3g}"
        values = (" [" + ", ".join(f"{v:.4g}" for v in result.values) + "]"
                  if measure in ("top_eigenvalues",) else "")
        print(f"{run.run_id}: {measure} {result.value:.5g}{error}{values} "
              f"({result.hvps} HVPs, {result.gradient_evals} gradients, "
              f"{result.pass_equivalents:.1f} gradient passes of CPU time, "
              f"{result.seconds:.1f} s; {result.message})", flush=True)
    return written


def _derive_density(path: str) -> None:
    rows = spectral_density.density_rows(results.read_rows(path))
    if not rows:
        return
    out_dir = os.path.dirname(path)
    csv_path = spectral_density.write_csv(rows, os.path.join(out_dir, DENSITY_CSV))
    png = spectral_density.plot(results.read_rows(csv_path), os.path.join(out_dir, DENSITY_PNG))
    print(f"spectral density -> {csv_path}, {png}")


def main(argv):
    del argv  # Rejected by common.run when not empty.
    config = _config()
    strategy = common.strategy()
    runs = run_selection.load_runs(FLAGS.runs, FLAGS.output_dir, strategy)
    _check(runs, config)
    splits: dict = {}
    for run in runs:  # Load (and check) every data set before the first measurement.
        run_selection.split_of(run.config, splits)
    path = os.path.join(FLAGS.output_dir, CURVATURE_FILE)
    context = {"strategy": distribute.describe(strategy), "flags": common.nondefault_flags(),
               "chief": train.is_chief(strategy), "path": path}
    finished = curvature_rows.finished_keys(results.read_rows(path))
    written = sum(_measure(run, run_selection.split_of(run.config, splits),
                           strategy, config, finished, context) for run in runs)
    if context["chief"]:
        _derive_density(path)
    print(f"{written} new curvature row(s) for {len(runs)} run(s) -> {path}")


if __name__ == "__main__":
    common.run(main)
