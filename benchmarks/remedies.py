"""Remedies for the large-batch gap, each from the same x0 as the plain SB and LB runs.

    python -m benchmarks.remedies --flagfile=flags/cpu/remedies_F1_fmnist.flags
    python -m benchmarks.remedies --flagfile=flags/remedies_paper.flags --models=C1

For each network, trial and remedy of --remedies (grammar in ``lbgap_tf.experiments.remedies``:
components joined by +, parameters as NAME:KEY=VALUE, e.g.
``--remedies=plain,sqrt_lr:warmup=2,ghost_bn,sqrt_lr+ghost_bn+adapt,grow,sam:rho=0.05``), the
LB run with that remedy from the plain SB run's x0, and its full-space sharpness. Writes into
--output_dir ``runs.csv``, ``sharpness.csv``, ``remedies.csv`` (one row per network, trial and
remedy), the derived ``remedies_table.csv`` and ``remedies.md`` (also printed). Runs of a
``benchmarks.gap`` output folder with the same SB/LB settings are reused; rerunning the same
command repeats nothing finished.
"""

import os

from absl import flags

from benchmarks import common
from lbgap_tf import sharpness, tables
from lbgap_tf.experiments import remedies
from lbgap_tf.reporting import remedies_table

FLAGS = flags.FLAGS
TABLE_FILE = "remedies_table.csv"
SUMMARY_FILE = "remedies.md"

common.define_data_flags()
common.define_optimization_flags()
common.define_distribution_flags()
common.define_output_flags()
common.define_networks_flags(trials=1)
flags.DEFINE_list("remedies", ["plain", "sqrt_lr", "ghost_bn", "grow"],
                  "Remedies for LB, each NAME[:KEY=VALUE...] or several joined by +: plain, "
                  "augment, linear_lr, sqrt_lr (warmup=E), ghost_bn (ghost=G), adapt, grow "
                  "(schedule=E@B/E@B), conservative (lambda, iterations), adversarial (eps), "
                  "sam (rho), asam (rho, eta).")
common.define_pair_flags()
common.define_sharpness_flags(subspace_dims=None, solvers=sharpness.SOLVERS)
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags too.

# The remedy flags of the shared group change SB and LB alike; here remedies are per LB run.
_REMEDY_FLAGS = ("augment", "lr_scaling", "reference_batch", "warmup_epochs", "ghost_batch",
                 "regime_adaptation", "batch_schedule", "step_remedy", "conservative_lambda",
                 "conservative_iterations", "adversarial_eps", "sam_rho", "asam_eta")


def remedies_config() -> remedies.RemediesConfig:
    """The ``RemediesConfig`` of the flags."""
    changed = [name for name in _REMEDY_FLAGS if FLAGS[name].present]
    if changed:
        raise remedies.RemedyError(
            f"--{changed[0]} would apply to SB and LB alike: give remedies in --remedies "
            "(e.g. --remedies=plain,sqrt_lr:warmup=2)")
    sb, lb = common.pair_configs(synthetic=common.synthetic_spec(FLAGS.models[0]))
    return remedies.RemediesConfig(
        models=common.networks(), sb=sb, lb=lb,
        remedies=remedies.parse_remedies(FLAGS.remedies), trials=FLAGS.trials,
        first_seed=FLAGS.seed, sharpness=common.sharpness_plan())


def main(argv):
    del argv  # Rejected by common.run when not empty.
    config = remedies_config()
    outcome = remedies.run(config, output_dir=FLAGS.output_dir, strategy=common.strategy(),
                           data_dirs=common.data_dirs(), quiet=FLAGS.quiet,
                           nondefault_flags=common.nondefault_flags())
    rows = remedies_table.table(outcome.remedy_rows, outcome.sharpness_rows, outcome.run_rows)
    table_path = os.path.join(FLAGS.output_dir, TABLE_FILE)
    tables.write_table(table_path, rows)
    text = remedies_table.markdown(rows, wall_time_s=outcome.wall_time_s)
    summary_path = os.path.join(FLAGS.output_dir, SUMMARY_FILE)
    tables.write_text_atomic(summary_path, text)
    print(text)
    print(f"Table: {table_path}; summary: {summary_path}")


if __name__ == "__main__":
    common.run(main)
