"""Fig. 4 of the paper: test accuracy and sharpness of the final iterate against the GLOBAL
batch size, one curve per trial with mean ± std bands.

    python -m benchmarks.batch_sweep --flagfile=flags/cpu/fig4_batch_sweep_F1_fmnist.flags
    python -m benchmarks.batch_sweep --flagfile=flags/fig4_batch_sweep_C1.flags
    python -m benchmarks.batch_sweep --output_dir=results/cpu_fig4_F1_fmnist --replot

For each trial (seed --seed + k) one run per --batch_sizes entry, all from the x0 the smallest
batch's run drew from the seed; each final iterate's sharpness per the sharpness flags. Rows:
``runs.csv``, ``sharpness.csv`` and the derived ``fig4_sweep.csv`` in --output_dir, figure
``fig4_sweep.png`` drawn from ``fig4_sweep.csv`` alone (--replot redraws it without any
TensorFlow work). A rerun trains and measures nothing already recorded.
"""

import os

from absl import flags

from benchmarks import common, figure_flags
from lbgap_tf import results
from lbgap_tf.experiments import sweep
from lbgap_tf.reporting import plots

FLAGS = flags.FLAGS
FIGURE_FILE = "fig4_sweep.png"

figure_flags.define_figure_flags()
common.define_sharpness_flags()
# --helpshort lists the shared flags too.
flags.adopt_module_key_flags(common)
flags.adopt_module_key_flags(figure_flags)
flags.DEFINE_list("batch_sizes", ["256", "1024", "2048", "6000"],
                  "GLOBAL batch sizes (over all replicas), strictly increasing.")
flags.DEFINE_integer("epochs", 20, "Epochs of every run (the cap under --plateau_patience); "
                     "the paper: 100.")
flags.DEFINE_integer("trials", 1, "Trials; trial k uses seed --seed + k.")
flags.register_validator("epochs", lambda v: v >= 1, message="--epochs must be positive")
flags.register_validator("trials", lambda v: v >= 1, message="--trials must be positive")


def sweep_config() -> sweep.SweepConfig:
    """The ``SweepConfig`` of the flags."""
    return sweep.SweepConfig(
        base=figure_flags.train_config(epochs=FLAGS.epochs),
        batch_sizes=figure_flags.int_list("batch_sizes", FLAGS.batch_sizes),
        trials=FLAGS.trials, first_seed=FLAGS.seed, sharpness=common.sharpness_plan())


def main(argv):
    del argv  # Rejected by common.run when not empty.
    csv_path = os.path.join(FLAGS.output_dir, sweep.SWEEP_FILE)
    if FLAGS.replot:
        rows = results.read_rows(csv_path)
    else:
        rows = sweep.run(sweep_config(), output_dir=FLAGS.output_dir, strategy=common.strategy(),
                         data_dirs=common.data_dirs(), quiet=FLAGS.quiet,
                         nondefault_flags=common.nondefault_flags()).rows
    figure = plots.sweep_plot(rows, os.path.join(FLAGS.output_dir, FIGURE_FILE))
    print(f"rows: {csv_path}\nfigure: {figure}")


if __name__ == "__main__":
    common.run(main)
