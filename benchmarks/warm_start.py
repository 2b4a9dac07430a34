"""Fig. 5 of the paper: LB runs warm-started from an SB run's iterates; test accuracy and
sharpness of each LB solution against the SB epochs it started from.

    python -m benchmarks.warm_start --flagfile=flags/cpu/fig5_warm_start_F1_fmnist.flags
    python -m benchmarks.warm_start --flagfile=flags/fig5_warm_start_C1.flags
    python -m benchmarks.warm_start --output_dir=results/cpu_fig5_F1_fmnist --replot

Per trial (seed --seed + k): one SB run keeping its weights after every epoch
(``runs/<id>/snapshots/epoch<k>.npz``), then from each --start_epochs entry one LB run of
--lb_epochs with a fresh optimizer, and each LB solution's sharpness. Rows: ``runs.csv``,
``sharpness.csv`` and the derived ``fig5_warm_start.csv``; figure ``fig5_warm_start.png``
drawn from that CSV alone (--replot redraws it without any TensorFlow work). A rerun trains
and measures nothing already recorded.
"""

import os

from absl import flags

from benchmarks import common, figure_flags
from lbgap_tf import results
from lbgap_tf.experiments import warm_start
from lbgap_tf.reporting import plots

FLAGS = flags.FLAGS
FIGURE_FILE = "fig5_warm_start.png"

figure_flags.define_figure_flags()
common.define_pair_flags()
common.define_sharpness_flags()
# --helpshort lists the shared flags too.
flags.adopt_module_key_flags(common)
flags.adopt_module_key_flags(figure_flags)
flags.DEFINE_list("start_epochs", ["0", "1", "2", "5", "10", "20"],
                  "SB epochs after which an LB run starts (0: LB from x0), strictly "
                  "increasing, at most --sb_epochs.")
flags.DEFINE_integer("trials", 1, "Trials; trial k uses seed --seed + k.")
flags.register_validator("trials", lambda v: v >= 1, message="--trials must be positive")


def warm_start_config() -> warm_start.WarmStartConfig:
    """The ``WarmStartConfig`` of the flags."""
    sb, lb = figure_flags.pair_configs()
    return warm_start.WarmStartConfig(
        sb=sb, lb=lb, start_epochs=figure_flags.int_list("start_epochs", FLAGS.start_epochs),
        trials=FLAGS.trials, first_seed=FLAGS.seed, sharpness=common.sharpness_plan())


def main(argv):
    del argv  # Rejected by common.run when not empty.
    csv_path = os.path.join(FLAGS.output_dir, warm_start.WARM_START_FILE)
    if FLAGS.replot:
        rows = results.read_rows(csv_path)
    else:
        rows = warm_start.run(warm_start_config(), output_dir=FLAGS.output_dir,
                              strategy=common.strategy(), data_dirs=common.data_dirs(),
                              quiet=FLAGS.quiet, nondefault_flags=common.nondefault_flags()).rows
    figure = plots.warm_start_plot(rows, os.path.join(FLAGS.output_dir, FIGURE_FILE))
    print(f"rows: {csv_path}\nfigure: {figure}")


if __name__ == "__main__":
    common.run(main)
