"""Fig. 6 of the paper: sharpness against the training cross-entropy along training, SB and
LB from one x0.

    python -m benchmarks.along_training --flagfile=flags/cpu/fig6_along_training_F1_fmnist.flags
    python -m benchmarks.along_training --flagfile=flags/fig6_along_training_C1.flags
    python -m benchmarks.along_training --output_dir=results/cpu_fig6_F1_fmnist --replot

SB and LB (seed --seed, LB from SB's x0) keep their weights after the --sb_snapshots and
--lb_snapshots epochs; each kept iterate is evaluated exactly on the whole training and test
sets (``snapshots.csv``) and measured per the sharpness flags (``sharpness.csv``, run id
``<run>@epoch<k>``). The derived ``fig6_along_training.csv`` and the figure
``fig6_along_training.png`` (drawn from that CSV alone; --replot redraws it without any
TensorFlow work) go to --output_dir. A rerun repeats nothing already recorded.
"""

import os

from absl import flags

from benchmarks import common, figure_flags
from lbgap_tf import results
from lbgap_tf.experiments import along_training
from lbgap_tf.reporting import plots

FLAGS = flags.FLAGS
FIGURE_FILE = "fig6_along_training.png"

figure_flags.define_figure_flags()
common.define_pair_flags()
common.define_sharpness_flags()
# --helpshort lists the shared flags too.
flags.adopt_module_key_flags(common)
flags.adopt_module_key_flags(figure_flags)
flags.DEFINE_list("sb_snapshots", ["1", "2", "5", "10", "20"],
                  "SB epochs whose iterates are measured, strictly increasing, at most "
                  "--sb_epochs.")
flags.DEFINE_list("lb_snapshots", ["1", "2", "5", "10", "20"],
                  "LB epochs whose iterates are measured, strictly increasing, at most "
                  "--lb_epochs.")


def along_training_config() -> along_training.AlongTrainingConfig:
    """The ``AlongTrainingConfig`` of the flags."""
    sb, lb = figure_flags.pair_configs()
    return along_training.AlongTrainingConfig(
        sb=sb, lb=lb, sb_epochs=figure_flags.int_list("sb_snapshots", FLAGS.sb_snapshots),
        lb_epochs=figure_flags.int_list("lb_snapshots", FLAGS.lb_snapshots),
        sharpness=common.sharpness_plan())


def main(argv):
    del argv  # Rejected by common.run when not empty.
    csv_path = os.path.join(FLAGS.output_dir, along_training.ALONG_FILE)
    if FLAGS.replot:
        rows = results.read_rows(csv_path)
    else:
        rows = along_training.run(along_training_config(), output_dir=FLAGS.output_dir,
                                  strategy=common.strategy(), data_dirs=common.data_dirs(),
                                  quiet=FLAGS.quiet,
                                  nondefault_flags=common.nondefault_flags()).rows
    figure = plots.along_training_plot(rows, os.path.join(FLAGS.output_dir, FIGURE_FILE))
    print(f"rows: {csv_path}\nfigure: {figure}")


if __name__ == "__main__":
    common.run(main)
