"""The generalization-gap benchmark: Tables 2-4 end to end, and a regression gate.

    python -m benchmarks.gap --flagfile=flags/cpu/gap_F1_fmnist.flags
    python -m benchmarks.gap --flagfile=flags/gap_paper.flags --models=F1,C1

For each network and trial: SB and LB from the same seeded x0, full train/test accuracy, the
distance ratio, and sharpness (full space and random subspace, each epsilon and solver).
Writes into --output_dir the rows ``runs.csv``, ``pairs.csv``, ``sharpness.csv``, the derived
``table2.csv``, ``table3.csv``, ``table4.csv`` and ``summary.md`` (also printed). Rerunning
the same command repeats no finished stage.

--baseline=FILE checks the results against bounds and exits 1 listing every violated bound
(also when it checked nothing: no bound on these networks, or pairs missing);
--write_baseline=FILE adds a baseline derived from these results (with the stated
tolerances) to FILE.
"""

import dataclasses
import os

from absl import flags

from benchmarks import common
from lbgap_tf import gap, gate, report, sharpness, tables

FLAGS = flags.FLAGS
SUMMARY_FILE = "summary.md"
EXIT_GATE_FAILED = 1

common.define_data_flags()
common.define_optimization_flags()
common.define_distribution_flags()
common.define_output_flags()
common.define_checkpoint_flags()
common.define_networks_flags(trials=5)
common.define_pair_flags()
common.define_sharpness_flags(epsilons=("1e-3", "5e-4"), subspace_dims=("full", "100"),
                              solvers=("lbfgsb", "ascent"))
flags.adopt_module_key_flags(common)  # --helpshort lists the shared flags too.
flags.DEFINE_list("subspace_distributions", [sharpness.DEFAULT_SUBSPACE_DISTRIBUTION],
                  "Distributions of the random subspace matrix A, each with its own rows: "
                  "normal_1_over_p (N(0, 1/p) entries), normal (N(0, 1)), uniform (U[0, 1)), "
                  "uniform_unit_columns (U[0, 1) with unit-norm columns). The first is the one "
                  "Table 4 compares with the paper.")
flags.DEFINE_float("solver_disagreement_factor", report.DISAGREEMENT_FACTOR,
                   "The summary flags every measurement whose solvers' values differ by more "
                   "than this factor.")
flags.DEFINE_float("solver_stall_fraction", report.STALL_FRACTION,
                   "The summary flags every solve whose best point has ||y|| / ||r|| below "
                   "this (it stayed near y = 0).")
flags.DEFINE_string("baseline", None, "Gate the results against the bounds in this JSON file.")
flags.DEFINE_string("write_baseline", None,
                    "Add a baseline derived from these results to this JSON file.")
flags.DEFINE_string("baseline_name", None,
                    "Name of the baseline --write_baseline writes (default: models, data "
                    "set and device).")
flags.DEFINE_float("baseline_accuracy_tolerance", 2.0,
                   "--write_baseline: accuracy bounds lie this many percentage points "
                   "outside the measured range.")
flags.DEFINE_float("baseline_ratio_tolerance", 2.0,
                   "--write_baseline: ratio bounds lie this factor below the smallest trial.")

flags.register_validator("subspace_distributions", lambda names: bool(names) and all(
    name in sharpness.SUBSPACE_DISTRIBUTIONS for name in names),
    message="--subspace_distributions takes names from "
            f"{', '.join(sharpness.SUBSPACE_DISTRIBUTIONS)}")
flags.register_validator("solver_disagreement_factor", lambda v: v >= 1,
                         message="--solver_disagreement_factor must be >= 1")
flags.register_validator("solver_stall_fraction", lambda v: 0 <= v < 1,
                         message="--solver_stall_fraction must be in [0, 1)")


def gap_config() -> gap.GapConfig:
    """The ``GapConfig`` of the flags."""
    sb, lb = common.pair_configs(synthetic=common.synthetic_spec(FLAGS.models[0]))
    plan = dataclasses.replace(
        common.sharpness_plan(),
        subspace_distributions=tuple(dict.fromkeys(FLAGS.subspace_distributions)))
    return gap.GapConfig(models=common.networks(), sb=sb, lb=lb, trials=FLAGS.trials,
                         first_seed=FLAGS.seed, sharpness=plan)


def main(argv):
    del argv  # Rejected by common.run when not empty.
    config = gap_config()
    if FLAGS.baseline:
        gate.load_baselines(FLAGS.baseline)  # A malformed baseline fails before training.
    strategy = common.strategy()
    outcome = gap.run(config, output_dir=FLAGS.output_dir, strategy=strategy,
                      data_dirs=common.data_dirs(), quiet=FLAGS.quiet,
                      nondefault_flags=common.nondefault_flags(),
                      checkpoint_every_s=FLAGS.checkpoint_every_s)
    text = report.summary(outcome, disagreement_factor=FLAGS.solver_disagreement_factor,
                          stall_fraction=FLAGS.solver_stall_fraction)
    summary_path = os.path.join(FLAGS.output_dir, SUMMARY_FILE)
    tables.write_text_atomic(summary_path, text)
    print(text)
    print(f"Tables: {', '.join(os.path.join(FLAGS.output_dir, f'table{k}.csv') for k in (2, 3, 4))}"
          f"; summary: {summary_path}")
    if outcome.diverged:
        common.fail(
            f"{len(outcome.diverged)} run(s) diverged (training loss NaN or inf): "
            + ", ".join(f"{row['run_id']} at epoch {row['epochs_run']}"
                        for row in outcome.diverged)
            + "; their trials have no pair or sharpness, so no baseline is written or "
            "checked: lower --learning_rate", EXIT_GATE_FAILED)
    setup = gate.setup_of(outcome.run_rows)
    if FLAGS.write_baseline:
        name = FLAGS.baseline_name or (
            f"{','.join(config.models)} on {outcome.run_rows[0]['dataset']}, "
            f"{setup['device_kind']}")
        entry = gate.derive_baseline(
            outcome.run_rows, outcome.pair_rows, outcome.sharpness_rows, setup, name=name,
            accuracy_tolerance=FLAGS.baseline_accuracy_tolerance,
            ratio_tolerance=FLAGS.baseline_ratio_tolerance)
        gate.write_baseline(FLAGS.write_baseline, entry)
        print(f"wrote baseline {name!r} with {len(entry['bounds'])} bounds to "
              f"{FLAGS.write_baseline}")
    if FLAGS.baseline:
        verdict = gate.check(FLAGS.baseline, outcome.run_rows, outcome.pair_rows,
                             outcome.sharpness_rows, setup)
        print(verdict.describe())
        if not verdict.passed:
            common.fail(f"regression gate failed: {verdict.reason(FLAGS.baseline)} (listed "
                        "above)", EXIT_GATE_FAILED)


if __name__ == "__main__":
    common.run(main)
