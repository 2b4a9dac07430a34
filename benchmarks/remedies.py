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
from lbgap_tf import gap, models, sharpness, tables, train
from lbgap_tf.experiments import remedies
from lbgap_tf.reporting import remedies_table

FLAGS = flags.FLAGS
TABLE_FILE = "remedies_table.csv"
SUMMARY_FILE = "remedies.md"

common.define_data_flags()
common.define_optimization_flags()
common.define_distribution_flags()
common.define_output_flags()
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags too.

flags.DEFINE_list("models", ["F1"], "Networks, e.g. F1,C1 (Table 1 names).")
flags.DEFINE_integer("trials", 1, "Trials per network; trial k uses seed --seed + k.")
flags.DEFINE_list("remedies", ["plain", "sqrt_lr", "ghost_bn", "grow"],
                  "Remedies for LB, each NAME[:KEY=VALUE...] or several joined by +: plain, "
                  "augment, linear_lr, sqrt_lr (warmup=E), ghost_bn (ghost=G), adapt, grow "
                  "(schedule=E@B/E@B), conservative (lambda, iterations), adversarial (eps), "
                  "sam (rho), asam (rho, eta).")
flags.DEFINE_integer("sb_batch_size", train.SB_BATCH_SIZE,
                     "SB GLOBAL batch size (over all replicas); the paper's 256.")
flags.DEFINE_integer("lb_batch_size", None,
                     "LB GLOBAL batch size (over all replicas). Default: --lb_fraction of the "
                     "training set (the paper's 10%).")
flags.DEFINE_integer("sb_epochs", 20, "SB epochs (the cap under --plateau_patience).")
flags.DEFINE_integer("lb_epochs", 20, "LB epochs (the cap under --plateau_patience).")
flags.DEFINE_list("epsilons", ["1e-3"], "Sharpness box sizes (Metric 2.1), full space.")
flags.DEFINE_list("solvers", list(sharpness.SOLVERS),
                  "Sharpness solvers: lbfgsb (the paper's) and/or ascent.")
flags.DEFINE_integer("sharpness_max_iter", 10, "Sharpness solver iterations (the paper: 10).")
flags.DEFINE_integer("sharpness_examples", None,
                     "Evaluate sharpness on a fixed seeded subset of this many training "
                     "examples. Default: the whole training set.")
flags.DEFINE_integer("sharpness_batch_size", 5000,
                     "GLOBAL evaluation batch of the sharpness objective.")

for _name in ("trials", "sb_batch_size", "lb_batch_size", "sb_epochs", "lb_epochs",
              "sharpness_max_iter", "sharpness_examples", "sharpness_batch_size"):
    flags.register_validator(_name, lambda v: v is None or v >= 1,
                             message=f"--{_name} must be a positive integer")
flags.register_validator("models", lambda names: bool(names) and all(
    name in models.MODEL_NAMES for name in names),
    message=f"--models takes names from {', '.join(models.MODEL_NAMES)}, e.g. F1,C1")
flags.register_validator("solvers", lambda names: bool(names) and all(
    name in sharpness.SOLVERS for name in names),
    message=f"--solvers takes names from {', '.join(sharpness.SOLVERS)}")

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
    try:
        epsilons = tuple(float(text) for text in FLAGS.epsilons)
    except ValueError as error:
        raise sharpness.SharpnessError(
            f"--epsilons must be numbers, got {FLAGS.epsilons}: e.g. --epsilons=1e-3"
        ) from error
    shared = common.optimization_settings()
    synthetic = common.synthetic_spec(FLAGS.models[0])
    sb = train.TrainConfig(**shared, regime="SB", batch_size=FLAGS.sb_batch_size,
                           epochs=FLAGS.sb_epochs, synthetic=synthetic)
    lb = train.TrainConfig(**shared, regime="LB", batch_size=FLAGS.lb_batch_size,
                           epochs=FLAGS.lb_epochs, synthetic=synthetic)
    plan = gap.SharpnessPlan(
        epsilons=epsilons, subspace_dims=(None,), solvers=tuple(FLAGS.solvers),
        max_iter=FLAGS.sharpness_max_iter, eval_examples=FLAGS.sharpness_examples,
        eval_batch_size=FLAGS.sharpness_batch_size)
    return remedies.RemediesConfig(
        models=tuple(FLAGS.models), sb=sb, lb=lb,
        remedies=remedies.parse_remedies(FLAGS.remedies), trials=FLAGS.trials,
        first_seed=FLAGS.seed, sharpness=plan)


def main(argv):
    del argv  # Rejected by common.run when not empty.
    config = remedies_config()
    if FLAGS.dataset == "synthetic" and len(config.models) > 1:
        raise ValueError("--dataset=synthetic takes one network at a time: pass one --models")
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
