"""Fig. 3 and Fig. 7 of the paper (the loss between an SB and an LB minimizer), with 1-D
filter-normalised slices and 2-D contours of the loss around each minimizer.

    python -m benchmarks.parametric --flagfile=flags/cpu/fig3_parametric_F1_fmnist.flags
    python -m benchmarks.parametric --flagfile=flags/fig3_parametric_F1.flags
    python -m benchmarks.parametric --output_dir=results/cpu_gap_F1_fmnist --replot

Trains SB and LB from the same x0 (seed --seed), or finds them in --output_dir when the gap
benchmark (or an earlier run of this one) trained them with the same settings, evaluates every
point and appends one row per point to ``<output_dir>/parametric.csv``; then draws
``fig3_linear_<id>.png``, ``fig7_curvilinear_<id>.png``, ``slices_<id>.png`` and
``contours_<id>.png`` from those rows. A rerun evaluates only the points not yet in the CSV;
--replot redraws every experiment's PNGs of the folder from the CSV alone.
"""

import os

from absl import flags, logging

from benchmarks import common, figure_flags
from lbgap_tf import results
from lbgap_tf.experiments import parametric
from lbgap_tf.measures import landscape
from lbgap_tf.reporting import plots

FLAGS = flags.FLAGS

figure_flags.define_figure_flags()
common.define_pair_flags()
# --helpshort lists the shared flags too.
flags.adopt_module_key_flags(common)
flags.adopt_module_key_flags(figure_flags)
flags.DEFINE_list("alphas", None, "Path parameters, strictly increasing. Default: the paper's "
                  "25 evenly spaced values in [-1, 2].")
flags.DEFINE_list("paths", list(landscape.PATHS),
                  "linear (Fig. 3: alpha x_LB + (1-alpha) x_SB) and/or curvilinear (Fig. 7: "
                  "sin(alpha pi/2) x_LB + cos(alpha pi/2) x_SB).")
flags.DEFINE_list("slice_steps", None, "Steps t of the 1-D slices x + t d, strictly "
                  "increasing. Default: 21 evenly spaced in [-1, 1].")
flags.DEFINE_integer("slice_directions", 2, "Random filter-normalised directions per "
                     "minimizer for the 1-D slices (0: no slices).")
flags.DEFINE_list("contour_steps", None, "Steps of each axis of the 2-D contour grid, "
                  "strictly increasing. Default: 11 evenly spaced in [-1, 1].")
flags.DEFINE_bool("contour", True, "Evaluate the 2-D contours (--nocontour: none).")
flags.DEFINE_integer("landscape_examples", None,
                     "Slices and contours evaluate the training loss on a fixed subset of this "
                     "many training examples (drawn from --seed). Default: all of them.")
flags.DEFINE_enum("bias_bn", "zero", landscape.BIAS_BN_CHOICES,
                  "Direction of biases and BN gamma/beta: zero (Li et al.'s --xignore biasbn) "
                  "or weights (the direction equals the weights).")
flags.register_validator("paths", lambda v: bool(v) and set(v) <= set(landscape.PATHS),
                         message=f"--paths takes {','.join(landscape.PATHS)}")
flags.register_validator("slice_directions", lambda v: v >= 0,
                         message="--slice_directions must be >= 0")
flags.register_validator("landscape_examples", lambda v: v is None or v >= 1,
                         message="--landscape_examples must be a positive integer")


def _grid(name: str, default: tuple[float, ...]) -> tuple[float, ...]:
    values = getattr(FLAGS, name)
    return default if values is None else figure_flags.float_list(name, values)


def parametric_config() -> parametric.ParametricConfig:
    """The ``ParametricConfig`` of the flags."""
    sb, lb = figure_flags.pair_configs()
    defaults = parametric.ParametricConfig(sb=sb, lb=lb)
    slice_steps = _grid("slice_steps", defaults.slice_steps)
    contour_steps = _grid("contour_steps", defaults.contour_steps)
    return parametric.ParametricConfig(
        sb=sb, lb=lb, alphas=_grid("alphas", defaults.alphas), paths=tuple(FLAGS.paths),
        slice_steps=slice_steps, slice_directions=FLAGS.slice_directions,
        contour_steps=contour_steps if FLAGS.contour else (),
        landscape_examples=FLAGS.landscape_examples, bias_bn=FLAGS.bias_bn)


def main(argv):
    del argv  # Rejected by common.run when not empty.
    csv_path = os.path.join(FLAGS.output_dir, parametric.PARAMETRIC_FILE)
    if FLAGS.replot:
        written = plots.parametric_figures(results.read_rows(csv_path), FLAGS.output_dir)
    else:
        config = parametric_config()
        outcome = parametric.run(config, output_dir=FLAGS.output_dir,
                                 strategy=common.strategy(), data_dirs=common.data_dirs(),
                                 quiet=FLAGS.quiet, nondefault_flags=common.nondefault_flags())
        logging.info("experiment %s: %d points in %.1f min", outcome.experiment_id,
                     len(outcome.rows), outcome.wall_time_s / 60)
        written = plots.parametric_figures(outcome.rows, FLAGS.output_dir)
    print(f"rows: {csv_path}")
    for path in written:
        print(f"figure: {path}")


if __name__ == "__main__":
    common.run(main)
